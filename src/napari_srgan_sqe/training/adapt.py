"""Adapting a model to a slide (the Fine-tune widget's "Adapt to this slide"): a
correction net in front of the model's SR network, trained with the 'unpaired' recipe
(Maeda 2020) on real LR of the slide (`training.unpaired_data.RealLRSampler`) against
clean LR of the bundled sample, and kept only if SR of held-out clean tiles stays
within `ADAPT_TOLERANCE_DB` of the start's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_srgan_sqe.training.unpaired_data import (
    RealLRImage,
    RealLRSampler,
    Rect,
    background_fraction,
    real_lr_image,
)

__all__ = [
    "ADAPT_TOLERANCE_DB",
    "AdaptSettings",
    "check_adaptable",
    "check_real_regions",
    "clean_lr_source",
    "iter_adapt",
]

ADAPT_TOLERANCE_DB = 0.5
"""An adapted model is kept only if its clean check stays within this of the start's."""
ADAPT_VAL_TILE = 128
"""Side of the clean check's HR tiles (px of the clean source)."""
ADAPT_VAL_TILES = 6
_CHECK_STEP = 2**40
"""The real-LR sampler's step whose batch measures how much C changes the slide's LR."""


@dataclass(frozen=True)
class AdaptSettings:
    """Adapting a model to a slide (the Fine-tune widget's "Adapt to this slide")."""

    steps: int = 200
    max_minutes: float | None = None
    seed: int = 0
    batch_size: int = 8
    patch_size: int = 48
    """LR px a side of the real and clean patches."""
    correction_layers: int = 7
    correction_channels: int = 48
    lr: float = 1e-4
    val_every: int = 25


def clean_lr_source() -> np.ndarray:
    """The clean LR of slide adaptation: the bundled sample slide's level 0 (20x, 0.5
    um/px) reduced by D_2 (Gaussian blur and 2 x 2 mean: 10x, the LR magnification the
    bundled models were trained for), which averages its JPEG Q30 artefacts away.
    Read once per process (about 1110 x 1483 px)."""
    global _CLEAN
    if _CLEAN is None:
        from napari_srgan_sqe.degradation import degrade
        from napari_srgan_sqe.io.sample import sample_slide_path
        from napari_srgan_sqe.io.slides import open_slide

        level0 = np.asarray(open_slide(sample_slide_path()).levels[0])
        _CLEAN = np.ascontiguousarray(degrade(level0, 2))
    return _CLEAN


_CLEAN: np.ndarray | None = None


def _check_tiles(image: np.ndarray, side: int, count: int) -> list[np.ndarray]:
    """Up to `count` tissue tiles (side x side) on a grid over `image`."""
    tiles = []
    for y in range(0, image.shape[0] - side + 1, side):
        for x in range(0, image.shape[1] - side + 1, side):
            t = image[y : y + side, x : x + side]
            if background_fraction(t) < 0.2:
                tiles.append(np.ascontiguousarray(t))
    step = max(1, len(tiles) // count)
    return tiles[::step][:count]


def check_adaptable(model: Any) -> None:
    """ConfigError (or StochasticModelError) when `model` cannot be adapted to a slide:
    adaptation puts a correction net in front of an SRGAN-family network."""
    from napari_srgan_sqe.config import ConfigError, GeneratorConfig, UnpairedConfig
    from napari_srgan_sqe.models.method import require_deterministic

    require_deterministic(model, "adapting to a slide")
    arch = model.config.generator
    if model.variant == "bicubic" or not isinstance(arch, GeneratorConfig | UnpairedConfig):
        raise ConfigError(
            f"adapting to a slide puts a correction net in front of an SRGAN-family network "
            f"(lrnet, srresnet) or continues an adapted model; {model.name!r} is "
            f"{model.arch!r}: Enhance with srgan-sqe-he-x4-clean or srgan-sqe-he-x4 first"
        )


def check_real_regions(
    rects: Sequence[Sequence[int]], shape: Sequence[int], patch: int
) -> list[Rect]:
    """The rectangles (x, y, w, h) as ints; RegionError naming the first that lies
    outside the image (`shape` (y, x, ...)) or is smaller than a `patch` x `patch` patch."""
    from napari_srgan_sqe.io.errors import RegionError

    if not rects:
        raise RegionError("no region: draw a rectangle or bring part of the slide into view")
    out = []
    for r in rects:
        x, y, w, h = (int(v) for v in r)
        if x < 0 or y < 0 or x + w > int(shape[1]) or y + h > int(shape[0]) or w <= 0 or h <= 0:
            raise RegionError(
                f"region {(x, y, w, h)} lies outside the image ({shape[1]} x {shape[0]} LR px)"
            )
        if w < patch or h < patch:
            raise RegionError(
                f"region {(x, y, w, h)} is smaller than a patch ({patch} x {patch} LR px): "
                "draw a larger one or zoom out"
            )
        out.append((x, y, w, h))
    return out


def iter_adapt(
    parent: Any,
    real: Sequence[RealLRImage],
    *,
    settings: AdaptSettings | None = None,
    stop_event: Any = None,
    device: str = "auto",
    name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Any:
    """Adapt `parent` (an SRGAN-family model, or an adapted one) to the real LR `real`
    with the 'unpaired' recipe: a correction net C in front of the parent's network U,
    trained by Maeda 2020's translation losses against the clean LR of
    `clean_lr_source` (U stays as it is). Returns the event stream of fine-tuning
    (`training.finetune`: Started, Step, Validated, Finished) so the same GUI shows it.

    Without HR of the slide there is no ground truth for C; the check that stands in
    for validation is SR of held-out clean tiles (HR = tiles of the clean source, LR =
    D_4 of them): C must leave clean LR alone, so the adapted model is kept only if
    that PSNR stays within ADAPT_TOLERANCE_DB of the start's. `Validated.best` says
    whether a state is within it. Raises ConfigError at once for a model that cannot
    be adapted.
    """
    from napari_srgan_sqe.config import (
        ModelConfig,
        TrainConfig,
        UnpairedConfig,
        UnpairedTrainConfig,
    )
    from napari_srgan_sqe.io.sample import sample_slide_path

    st = settings or AdaptSettings()
    check_adaptable(parent)
    arch = parent.config.generator
    if isinstance(arch, UnpairedConfig):
        ucfg = arch
    else:
        ucfg = UnpairedConfig(
            correction_layers=st.correction_layers,
            correction_channels=st.correction_channels,
            sr=arch,
        )
    s = ucfg.scale
    cfg = TrainConfig(
        data=[str(sample_slide_path())],  # the clean LR's source (reduced by D_2)
        model=ModelConfig(name=name or f"{parent.name}-adapted", variant="l1", generator=ucfg),
        recipe="unpaired",
        steps=st.steps,
        unpaired=UnpairedTrainConfig(
            real_lr=[{"path": im.name, "regions": im.regions} for im in real],
            real_patch_size=st.patch_size,
            real_batch_size=st.batch_size,
            train_sr=False,
        ),
        patch_size=st.patch_size * s,
        batch_size=st.batch_size,
        lr=st.lr,
        betas=(0.5, 0.999),
        seed=st.seed,
    )
    real_sampler = RealLRSampler(
        real, patch_size=st.patch_size, batch_size=st.batch_size, seed=st.seed
    )
    clean = clean_lr_source()
    cut = clean.shape[0] * 4 // 5  # the bottom fifth is held out for the clean check
    clean_sampler = RealLRSampler(
        [real_lr_image(clean[:cut], [], "sample slide, D_2")],
        patch_size=st.patch_size,
        batch_size=st.batch_size,
        seed=st.seed + 1,
    )
    checks = _check_tiles(clean[cut:], ADAPT_VAL_TILE, ADAPT_VAL_TILES)
    return _adapt(
        parent, cfg, real_sampler, clean_sampler, checks, st, stop_event, device, metadata
    )


def _adapt(
    parent: Any,
    cfg: Any,
    real_sampler: RealLRSampler,
    clean_sampler: RealLRSampler,
    checks: list[np.ndarray],
    st: AdaptSettings,
    stop_event: Any,
    device_name: str,
    metadata: dict[str, str] | None,
) -> Any:
    import copy
    import json
    import time

    import torch

    from napari_srgan_sqe.config import UnpairedConfig
    from napari_srgan_sqe.degradation import degrade
    from napari_srgan_sqe.metrics import psnr, ssim
    from napari_srgan_sqe.models.modelfile import SRModel, lineage
    from napari_srgan_sqe.models.predictor import resolve_device
    from napari_srgan_sqe.training.finetune import (
        FinetuneResult,
        Finished,
        Started,
        Step,
        Validated,
    )
    from napari_srgan_sqe.training.recipes import TrainingBatch, UnpairedRecipe

    device = torch.device(resolve_device(device_name))
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the GUI's other random draws stay as they were
        recipe = UnpairedRecipe(cfg, device, real=real_sampler)
    if isinstance(parent.config.generator, UnpairedConfig):
        recipe.G.load_state_dict(parent.generator.state_dict())
    else:
        recipe.G.sr.load_state_dict(parent.generator.state_dict())
    net = recipe.G
    s, halo = int(net.scale), int(net.halo)
    pairs = [(degrade(t, s), t) for t in checks]
    x_check = torch.from_numpy(real_sampler.batch(_CHECK_STEP)).to(device)

    @torch.no_grad()
    def check() -> dict[str, float]:
        """SR of the held-out clean tiles vs their HR; how much C changes the slide's LR."""
        was = net.training
        net.eval()
        rows = []
        for lr, hr in pairs:
            pad = np.pad(lr, ((halo, halo), (halo, halo), (0, 0)), mode="symmetric")
            x = torch.from_numpy(pad.astype(np.float32).transpose(2, 0, 1) / 255.0)[None]
            y = net(x.to(device))[0, :, s * halo : -s * halo, s * halo : -s * halo]
            sr = (y.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
            rows.append((psnr(sr, hr), ssim(sr, hr)))
        changed = net.correction(x_check).clamp(0, 1)
        mse = float(((changed - x_check) ** 2).mean())
        net.train(was)
        m = np.mean(rows, axis=0)
        return {
            "psnr": float(m[0]),
            "ssim": float(m[1]),
            "lr_change_db": float(10 * np.log10(1.0 / max(mse, 1e-12))),
        }

    before = check()
    notes = [
        "unpaired adaptation: a correction net learns to turn this slide's LR into the "
        "clean LR the model was trained on; the model itself stays as it is",
        f"clean check: SR of {len(pairs)} held-out clean tiles (no HR of this slide "
        f"exists); the result is kept if it stays within {ADAPT_TOLERANCE_DB} dB",
    ]
    history: list[dict[str, Any]] = [{"kind": "val", "step": 0, "elapsed_s": 0.0, **before}]
    yield Started(st.steps, "unpaired", real_sampler.n_regions, dict(before), tuple(notes))
    yield Validated(0, before["psnr"], before["ssim"], best=True)

    deadline = None if st.max_minutes is None else t0 + 60.0 * st.max_minutes
    stopped, done, last = False, 0, dict(before)
    try:
        for step in range(1, st.steps + 1):
            if (stop_event is not None and stop_event.is_set()) or (
                deadline is not None and time.perf_counter() > deadline
            ):
                stopped = True
                break
            clean = torch.from_numpy(clean_sampler.batch(step - 1)).to(device)
            losses = recipe.train_step(step - 1, TrainingBatch(hr=clean, lr=clean))
            done = step
            elapsed = time.perf_counter() - t0
            eta = elapsed / step * (st.steps - step)
            if deadline is not None:
                eta = min(eta, max(0.0, deadline - time.perf_counter()))
            history.append({"kind": "step", "step": step, "elapsed_s": elapsed, **losses})
            yield Step(step, losses["g"], eta, {k: v for k, v in losses.items() if k != "g"})
            if step % st.val_every == 0 or step == st.steps:
                last = check()
                ok = last["psnr"] >= before["psnr"] - ADAPT_TOLERANCE_DB
                history.append({"kind": "val", "step": step, "elapsed_s": elapsed, **last})
                yield Validated(step, last["psnr"], last["ssim"], best=ok)
    finally:
        net.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        device = torch.device("cpu")
    if done and history[-1]["kind"] != "val":  # stopped between two checks
        x_check = x_check.cpu()
        last = check()
        history.append({"kind": "val", "step": done, **last})
    kept = done > 0 and last["psnr"] >= before["psnr"] - ADAPT_TOLERANCE_DB
    if not done:
        notes.append("no step was taken: the original model is kept")
    elif not kept:
        notes.append(
            f"rejected: the clean check fell from {before['psnr']:.2f} to "
            f"{last['psnr']:.2f} dB (more than {ADAPT_TOLERANCE_DB} dB): the correction "
            "alters clean LR; kept the original model"
        )
    if kept:
        notes.append(
            f"corrected vs original LR of this slide: PSNR {last['lr_change_db']:.1f} dB "
            "(the higher, the smaller the correction)"
        )
        meta = {
            **lineage(parent),
            "training_data": "unpaired adaptation to the slide's LR",
            "recipe": "unpaired",
            "unpaired_sr_trained": "false",
            "finetune_mode": "unpaired",
            "finetune_steps": str(done),
            "finetune_before": json.dumps(before),
            "finetune_after": json.dumps(last),
            "finetune_improved": "true",
            "degradation": str(parent.metadata.get("degradation", "clean")),
            **{str(k): str(v) for k, v in (metadata or {}).items()},
        }
        model = SRModel(copy.deepcopy(net).eval(), cfg.model, metadata=meta).eval()
    else:
        model = parent
    yield Finished(
        FinetuneResult(
            model=model,
            parent=parent,
            before=before,
            after=last if kept else dict(before),
            improved=kept,
            stopped=stopped,
            steps_done=done,
            best_step=done if kept else 0,
            mode="unpaired",
            history=history,
            notes=notes,
            elapsed_s=time.perf_counter() - t0,
        )
    )
