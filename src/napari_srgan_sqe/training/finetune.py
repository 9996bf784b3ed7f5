"""Region fine-tuning: adapt a model to a user's own slide, paired or self-supervised.

Paired: (LR, HR) patches from the regions (the real LR, or D_s(HR) when only HR is
given). Self-supervised (ZSSR-style, SPEC section 5): pseudo-HR = augmented crops of
the LR region itself, pseudo-LR = D_s(pseudo-HR). A stripe on the right of each region
(`val_fraction`) is held out and never trained on; the state with the best validation
PSNR is kept, and if it is not better than the parent the parent is returned unchanged.

The loop is a generator of typed events (`iter_finetune`) so a GUI can run it in a
thread worker and a CLI in a plain loop; `finetune` drives it with a callback.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from napari_srgan_sqe.config import ConfigError, FinetuneConfig
from napari_srgan_sqe.degradation import degrade, degrade_torch
from napari_srgan_sqe.io.errors import RegionError
from napari_srgan_sqe.losses import GeneratorObjective
from napari_srgan_sqe.metrics import psnr, ssim
from napari_srgan_sqe.models.modelfile import SRModel

CONSISTENCY_TOLERANCE_DB = 0.5
"""Self-supervised results are rejected when D_s(SR) vs LR drops by more than this."""

__all__ = [
    "FinetuneEvent",
    "FinetuneResult",
    "Finished",
    "LOSS_PRESETS",
    "Rect",
    "RegionError",
    "Started",
    "Step",
    "Validated",
    "check_regions",
    "cut_regions",
    "finetune",
    "iter_finetune",
    "last_layers",
    "min_region_size",
    "seconds_to_gain",
    "train_width",
]

Mode = Literal["paired", "self-supervised"]
# Loss presets (`config.loss_preset`) offered for fine-tuning; the GAN term is dropped.
LOSS_PRESETS = ("srgan_sqe", "srgan_qe", "srgan_e", "srgan", "l1")
# Generator children that form the residual trunk; everything after them is "last".
TRUNK = ("head", "blocks", "trunk_tail")


class Rect(NamedTuple):
    """A rectangle in LR level-0 pixels: left x, top y, width, height."""

    x: int
    y: int
    w: int
    h: int


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Started:
    """Training begins: validation of the parent (`before`) is done; notes say what was skipped."""

    total_steps: int
    mode: str
    n_regions: int
    before: dict[str, float]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """One optimisation step is done: its total loss, the unweighted terms, seconds left."""

    step: int
    loss: float
    eta_s: float
    terms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Validated:
    """Validation on the held-out stripes after `step` (0 = the parent); `best` so far."""

    step: int
    psnr: float
    ssim: float
    best: bool = False


@dataclass(frozen=True)
class Finished:
    """The end (all steps, stop or time limit); `result.improved` False keeps the parent."""

    result: FinetuneResult


FinetuneEvent = Started | Step | Validated | Finished


@dataclass
class FinetuneResult:
    """The outcome: `model` is the new model, or the parent itself when not improved."""

    model: SRModel = field(repr=False)
    parent: SRModel = field(repr=False)
    before: dict[str, float]
    after: dict[str, float]
    improved: bool
    stopped: bool
    steps_done: int
    best_step: int
    mode: str
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        """One line for people: before -> after and what was kept."""
        b, a = self.before, self.after
        what = f"new model {self.model.name!r}" if self.improved else "the original model is kept"
        why = "" if self.improved else " (validation did not improve)"
        stop = ", stopped early" if self.stopped else ""
        return (
            f"{self.mode} fine-tune, {self.steps_done} steps{stop}: PSNR {b['psnr']:.2f} -> "
            f"{a['psnr']:.2f} dB, SSIM {b['ssim']:.4f} -> {a['ssim']:.4f}; {what}{why}"
        )


# ----------------------------------------------------------------------------- regions
def min_region_size(mode: Mode, cfg: FinetuneConfig, scale: int) -> tuple[int, int]:
    """Smallest (width, height) in LR px a region needs: one patch plus the stripe."""
    p_in, v_min = _input_patch(mode, cfg, scale), _min_stripe(mode, scale)
    w = p_in + 1
    while w - _stripe_width(w, cfg.val_fraction, v_min) < p_in:
        w += 1
    return w, max(p_in, v_min)


def check_regions(
    rects: Sequence[Sequence[int]],
    image_shape: Sequence[int],
    *,
    mode: Mode,
    scale: int,
    config: FinetuneConfig | None = None,
) -> list[Rect]:
    """Validate rectangles (x, y, w, h) against an LR image (H, W, ...); RegionError if bad."""
    cfg = config or FinetuneConfig()
    if not rects:
        raise RegionError("no regions: draw at least one rectangle on the image")
    height, width = int(image_shape[0]), int(image_shape[1])
    min_w, min_h = min_region_size(mode, cfg, scale)
    out = []
    for i, r in enumerate(rects, 1):
        x, y, w, h = (int(round(v)) for v in r)
        where = f"region {i} (x={x}, y={y}, w={w}, h={h})"
        if w <= 0 or h <= 0:
            raise RegionError(f"{where} is empty")
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise RegionError(f"{where} lies (partly) outside the image of {width} x {height} px")
        if w < min_w or h < min_h:
            raise RegionError(
                f"{where} is smaller than a patch: {mode} fine-tuning with patch_size "
                f"{cfg.patch_size} and val_fraction {cfg.val_fraction} needs at least "
                f"{min_w} x {min_h} LR px"
            )
        out.append(Rect(x, y, w, h))
    return out


def cut_regions(
    lr: Any,
    rects: Sequence[Sequence[int]],
    *,
    hr: Any = None,
    scale: int = 4,
    config: FinetuneConfig | None = None,
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """Read the regions from a Slide or an (H, W, 3) array (numpy / dask), after checking.

    Rectangles are in LR level-0 px. With `hr` (a Slide or array whose level 0 is
    `scale` x the LR), returns (lr, hr) pairs for paired mode; else LR regions.
    """
    lr_level = _level0(lr)
    mode: Mode = "paired" if hr is not None else "self-supervised"
    checked = check_regions(rects, lr_level.shape, mode=mode, scale=scale, config=config)
    hr_level = None
    if hr is not None:
        hr_level = _level0(hr)
        if tuple(d // scale for d in hr_level.shape[:2]) != tuple(lr_level.shape[:2]):
            raise RegionError(
                f"the HR image is {hr_level.shape[1]} x {hr_level.shape[0]} px, but {scale} x the "
                f"LR image ({lr_level.shape[1]} x {lr_level.shape[0]}) was expected"
            )
    out: list = []
    for x, y, w, h in checked:
        lr_reg = _rgb8(np.asarray(lr_level[y : y + h, x : x + w]))
        if hr_level is None:
            out.append(lr_reg)
        else:
            s = scale
            out.append(
                (lr_reg, _rgb8(np.asarray(hr_level[s * y : s * (y + h), s * x : s * (x + w)])))
            )
    return out


def _level0(src: Any) -> Any:
    levels = getattr(src, "levels", None)
    arr = levels[0] if levels is not None else src
    if getattr(arr, "ndim", 0) != 3 or arr.shape[2] != 3:
        raise RegionError(
            f"expected an RGB image (H, W, 3), got shape {getattr(arr, 'shape', None)}"
        )
    return arr


def _rgb8(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise RegionError(f"regions must be uint8 or float in [0, 1], got {a.dtype}")
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise RegionError(f"a region must be an RGB image (H, W, 3), got shape {a.shape}")
    return np.ascontiguousarray(a)


def _input_patch(mode: Mode, cfg: FinetuneConfig, scale: int) -> int:
    """Side, in LR region px, of one training patch."""
    return cfg.patch_size // scale if mode == "paired" else cfg.patch_size


def _min_stripe(mode: Mode, scale: int) -> int:
    """Narrowest useful validation stripe (LR px): 4 model-input px."""
    return 4 if mode == "paired" else 4 * scale


def _stripe_width(w: int, fraction: float, v_min: int) -> int:
    return max(v_min, int(round(w * fraction)))


def train_width(w: int, mode: Mode, cfg: FinetuneConfig, scale: int) -> int:
    """Width (LR px) of the trained left part of a region `w` wide; the rest validates."""
    return w - _stripe_width(w, cfg.val_fraction, _min_stripe(mode, scale))


# ----------------------------------------------------------------------------- data
@dataclass
class _Data:
    """Training sources (float32 HWC) and validation (input, target uint8) pairs."""

    inputs: list[np.ndarray]
    targets: list[np.ndarray | None]
    val: list[tuple[np.ndarray, np.ndarray]]
    weights: np.ndarray


def _prepare(
    regions: Sequence[Any], hr: Sequence[Any] | None, mode: Mode, cfg: FinetuneConfig, s: int
) -> _Data:
    """Split every region into a training part and a held-out right stripe."""
    if mode not in ("paired", "self-supervised"):
        raise ValueError(f"mode must be 'paired' or 'self-supervised', got {mode!r}")
    if cfg.patch_size % s:
        raise RegionError(f"patch_size {cfg.patch_size} is not a multiple of the scale {s}")
    regions = list(regions)
    if hr is not None:
        if len(hr) != len(regions):
            raise RegionError(f"{len(regions)} LR regions but {len(hr)} HR regions")
        regions = list(zip(regions, hr, strict=True))
    if not regions:
        raise RegionError("no regions to fine-tune on")
    p_in = _input_patch(mode, cfg, s)
    min_w, min_h = min_region_size(mode, cfg, s)
    data = _Data([], [], [], np.zeros(len(regions)))
    for i, item in enumerate(regions):
        lr_img, hr_img = _split_item(item, mode, s, i)
        h, w = lr_img.shape[:2]
        if w < min_w or h < min_h:
            raise RegionError(
                f"region {i + 1} is {w} x {h} LR px, smaller than a patch: {mode} fine-tuning "
                f"with patch_size {cfg.patch_size} needs at least {min_w} x {min_h}"
            )
        tw = train_width(w, mode, cfg, s)
        data.inputs.append(lr_img[:, :tw].astype(np.float32) / 255.0)
        if mode == "paired":
            data.targets.append(hr_img[:, : s * tw].astype(np.float32) / 255.0)
            data.val.append((lr_img[:, tw:].astype(np.float32) / 255.0, hr_img[:, s * tw :]))
        else:
            data.targets.append(None)
            stripe = lr_img[: h - h % s, tw : w - (w - tw) % s]
            data.val.append((degrade(stripe.astype(np.float32) / 255.0, s), stripe))
        data.weights[i] = (h - p_in + 1) * (tw - p_in + 1)
    data.weights /= data.weights.sum()
    return data


def _split_item(item: Any, mode: Mode, s: int, i: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(LR uint8, HR uint8 or None) of one region; D_s(HR) when the LR is None."""
    if mode == "self-supervised":
        if isinstance(item, tuple | list):
            raise RegionError("self-supervised mode takes LR regions, not (LR, HR) pairs")
        return _rgb8(np.asarray(item)), None
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise RegionError("paired mode needs (lr, hr) pairs, or LR regions with hr=[...]")
    hr_img = _rgb8(np.asarray(item[1]))
    hr_img = hr_img[
        : hr_img.shape[0] - hr_img.shape[0] % s, : hr_img.shape[1] - hr_img.shape[1] % s
    ]
    if item[0] is None:
        return degrade(hr_img, s), hr_img
    lr_img = _rgb8(np.asarray(item[0]))
    if lr_img.shape[:2] != (hr_img.shape[0] // s, hr_img.shape[1] // s):
        raise RegionError(
            f"region {i + 1}: HR {hr_img.shape[1]} x {hr_img.shape[0]} is not {s} x its LR "
            f"{lr_img.shape[1]} x {lr_img.shape[0]}"
        )
    return lr_img, hr_img


def _batch(
    data: _Data, mode: Mode, cfg: FinetuneConfig, s: int, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) float32 NCHW for `step`; pure function of (seed, step)."""
    rng = np.random.default_rng([cfg.seed, step])
    p = _input_patch(mode, cfg, s)
    ins, outs = [], []
    for _ in range(cfg.batch_size):
        i = int(rng.choice(len(data.inputs), p=data.weights))
        src = data.inputs[i]
        y, x = int(rng.integers(src.shape[0] - p + 1)), int(rng.integers(src.shape[1] - p + 1))
        k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        a = _augment(src[y : y + p, x : x + p], k, flip)
        t = data.targets[i]
        b = a if t is None else _augment(t[s * y : s * (y + p), s * x : s * (x + p)], k, flip)
        ins.append(a)
        outs.append(b)
    return np.stack(ins).transpose(0, 3, 1, 2).copy(), np.stack(outs).transpose(0, 3, 1, 2).copy()


def _augment(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k)
    return a[:, ::-1] if flip else a


# ----------------------------------------------------------------------------- model parts
def last_layers(generator: nn.Module) -> list[str]:
    """Names of the generator's children after the residual trunk (up-sampling and tail).

    Generic rule: every direct child that owns parameters and is not part of the
    trunk (`head`, `blocks`, `trunk_tail`); if a generator has no such names, its
    last child with parameters.
    """
    with_params = [n for n, m in generator.named_children() if any(True for _ in m.parameters())]
    if any(n in TRUNK for n in with_params):
        return [n for n in with_params if n not in TRUNK]
    return with_params[-1:]


def _trainable(generator: nn.Module, which: str) -> list[nn.Parameter]:
    keep = set(last_layers(generator)) if which == "last" else None
    params = []
    for name, child in generator.named_children():
        on = keep is None or name in keep
        for p in child.parameters():
            p.requires_grad_(on)
            if on:
                params.append(p)
    if not params:
        raise ConfigError(
            "this model has no trainable layers (a weight-free model cannot be fine-tuned)"
        )
    return params


def _freeze_batchnorm(module: nn.Module) -> None:
    """Batches are small: keep BatchNorm running statistics as trained."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def _sr_uint8(gen: nn.Module, inp: np.ndarray, halo: int, device: torch.device) -> np.ndarray:
    """SR (uint8) of a whole float [0, 1] image (symmetric padding by the halo, cropped back)."""
    s = int(gen.scale)
    pad = np.pad(inp, ((halo, halo), (halo, halo), (0, 0)), mode="symmetric")
    x = torch.from_numpy(np.ascontiguousarray(pad.transpose(2, 0, 1)))[None].to(device)
    h, w = inp.shape[:2]
    y = gen(x)[0, :, s * halo : s * (halo + h), s * halo : s * (halo + w)]
    return (y.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def _validate(gen: nn.Module, data: _Data, halo: int, device: torch.device) -> dict[str, float]:
    """Mean PSNR / SSIM over the held-out stripes (SR of the whole stripe, symmetric padding)."""
    was_training = gen.training
    gen.eval()
    rows = []
    for inp, target in data.val:
        sr = _sr_uint8(gen, inp, halo, device)
        rows.append((psnr(sr, target), ssim(sr, target)))
    gen.train(was_training)
    if was_training:
        _freeze_batchnorm(gen)
    m = np.mean(rows, axis=0)
    return {"psnr": float(m[0]), "ssim": float(m[1])}


@torch.no_grad()
def _consistency(gen: nn.Module, data: _Data, halo: int, device: torch.device) -> float:
    """Self-supervised guard at the true scale: mean PSNR of D_s(SR(LR stripe)) vs the LR
    stripe. Pseudo-pairs live one scale lower; a model can get better there and worse
    at the real scale, and then its SR stops agreeing with the LR it came from."""
    was_training = gen.training
    gen.eval()
    s = int(gen.scale)
    vals = []
    for _, lr_stripe in data.val:
        inp = lr_stripe.astype(np.float32) / 255.0
        vals.append(psnr(degrade(_sr_uint8(gen, inp, halo, device), s), lr_stripe))
    gen.train(was_training)
    if was_training:
        _freeze_batchnorm(gen)
    return float(np.mean(vals))


# ----------------------------------------------------------------------------- the loop
def _resolve_config(
    config: FinetuneConfig | None, mode: str | None, steps: int | None
) -> FinetuneConfig:
    cfg = (config or FinetuneConfig()).model_copy(deep=True)
    if mode is not None:
        cfg.mode = mode
    if steps is not None:
        cfg.steps = steps
    return cfg


def iter_finetune(
    model: SRModel,
    regions: Sequence[Any],
    *,
    mode: Mode | None = None,
    hr: Sequence[Any] | None = None,
    steps: int | None = None,
    config: FinetuneConfig | None = None,
    stop_event: threading.Event | None = None,
    device: str = "auto",
    name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Iterator[FinetuneEvent]:
    """Check the regions now (RegionError before anything trains), then return the event stream.

    `mode`/`steps` override `config`. Yields Started, Step (each step), Validated (every
    `val_every` steps and at the end) and finally Finished(result).
    """
    cfg = _resolve_config(config, mode, steps)
    if model.variant == "bicubic":
        raise ConfigError("the bicubic baseline has no weights to fine-tune; pick a trained model")
    data = _prepare(regions, hr, cfg.mode, cfg, model.scale)
    return _run(model, data, cfg, stop_event, device, name, metadata or {})


def _setup(
    parent: SRModel, cfg: FinetuneConfig, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, GeneratorObjective, list[str]]:
    """A trainable copy of the generator, its optimizer, the objective, and notes for people."""
    torch.manual_seed(cfg.seed)
    gen = copy.deepcopy(parent.generator).to(device).float()
    encoder = None
    if parent.encoder is not None:
        encoder = copy.deepcopy(parent.encoder).to(device).float().eval()
    notes, loss_cfg = [], cfg.loss.model_copy()
    if loss_cfg.lam_a > 0:
        notes.append("adversarial term skipped: fine-tuning has no discriminator")
        loss_cfg.lam_a = 0.0
    if loss_cfg.lam_e > 0 and encoder is None:
        notes.append("manifold loss L_E skipped: the model file carries no encoder")
        loss_cfg.lam_e = 0.0
    objective = GeneratorObjective(loss_cfg, encoder=encoder if loss_cfg.lam_e > 0 else None)
    params = _trainable(gen, cfg.train_layers)
    if cfg.train_layers == "last":
        notes.append(
            f"training only the layers after the residual trunk: {', '.join(last_layers(gen))}"
        )
    return gen, torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999)), objective, notes


def _train_step(
    gen: nn.Module,
    opt: torch.optim.Optimizer,
    objective: GeneratorObjective,
    batch: tuple[np.ndarray, np.ndarray],
    mode: Mode,
    s: int,
    device: torch.device,
) -> tuple[float, dict[str, float]]:
    """One Adam step; returns plain floats so no device tensor outlives it."""
    x, y = (torch.from_numpy(a).to(device) for a in batch)
    if mode == "self-supervised":
        x = degrade_torch(x, s)  # pseudo-LR from the pseudo-HR crop of the LR region
    total, terms = objective(gen(x), y)
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return float(total.detach()), {k: float(v) for k, v in terms.items()}


def _run(
    parent: SRModel,
    data: _Data,
    cfg: FinetuneConfig,
    stop_event: threading.Event | None,
    device_name: str,
    name: str | None,
    metadata: dict[str, str],
) -> Iterator[FinetuneEvent]:
    from napari_srgan_sqe.models.predictor import resolve_device

    device = torch.device(resolve_device(device_name))
    s, mode = parent.scale, cfg.mode
    t0 = time.perf_counter()
    gen, opt, objective, notes = _setup(parent, cfg, device)
    history: list[dict[str, Any]] = [{"kind": "note", "step": 0, "message": n} for n in notes]

    before = _validate(gen, data, parent.halo, device)
    guard = mode == "self-supervised"
    consistency_before = _consistency(gen, data, parent.halo, device) if guard else None
    best, best_step = dict(before), 0
    best_state: dict[str, torch.Tensor] | None = None
    history.append({"kind": "val", "step": 0, "elapsed_s": time.perf_counter() - t0, **before})
    yield Started(cfg.steps, mode, len(data.inputs), dict(before), tuple(notes))
    yield Validated(0, before["psnr"], before["ssim"], best=True)

    gen.train()
    _freeze_batchnorm(gen)
    stopped, done = False, 0
    deadline = None if cfg.max_minutes is None else t0 + 60.0 * cfg.max_minutes
    try:
        for step in range(1, cfg.steps + 1):
            if (stop_event is not None and stop_event.is_set()) or (
                deadline and time.perf_counter() > deadline
            ):
                stopped = True
                break
            loss, row_terms = _train_step(
                gen, opt, objective, _batch(data, mode, cfg, s, step), mode, s, device
            )
            done = step
            elapsed = time.perf_counter() - t0
            eta = elapsed / step * (cfg.steps - step)
            if deadline is not None:
                eta = min(eta, max(0.0, deadline - time.perf_counter()))
            history.append(
                {"kind": "step", "step": step, "elapsed_s": elapsed, "loss": loss, **row_terms}
            )
            yield Step(step, loss, eta, row_terms)
            if step % cfg.val_every == 0 or step == cfg.steps:
                val = _validate(gen, data, parent.halo, device)
                is_best = val["psnr"] > best["psnr"]
                if is_best:
                    best, best_step = val, step
                    best_state = {
                        k: v.detach().to("cpu", copy=True) for k, v in gen.state_dict().items()
                    }
                history.append(
                    {"kind": "val", "step": step, "elapsed_s": time.perf_counter() - t0, **val}
                )
                yield Validated(step, val["psnr"], val["ssim"], best=is_best)
    finally:  # release device memory: optimizer moments, encoder, gradients, weights
        del opt, objective
        gen.zero_grad(set_to_none=True)
        gen.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()

    improved = best_state is not None
    if improved and consistency_before is not None:
        gen.load_state_dict(best_state)
        consistency_after = _consistency(gen, data, parent.halo, device)
        before["consistency_psnr"] = consistency_before
        best["consistency_psnr"] = consistency_after
        if consistency_after < consistency_before - CONSISTENCY_TOLERANCE_DB:
            improved = False
            notes.append(
                f"rejected: the pseudo-pair validation improved, but D_s(SR) agrees less with "
                f"the LR ({consistency_before:.2f} -> {consistency_after:.2f} dB), a sign the "
                "model got worse at the real scale; kept the original model"
            )
    if improved:
        gen.load_state_dict(best_state)
        new = _child_model(parent, gen.eval(), name, cfg, data, best_step, before, best, metadata)
    else:
        new = parent
        msg = (
            notes[-1]
            if notes and notes[-1].startswith("rejected")
            else ("validation did not improve: kept the original model")
        )
        history.append({"kind": "note", "step": done, "message": msg})
    result = FinetuneResult(
        model=new,
        parent=parent,
        before=before,
        after=best if improved else dict(before),
        improved=improved,
        stopped=stopped,
        steps_done=done,
        best_step=best_step,
        mode=mode,
        history=history,
        notes=notes,
        elapsed_s=time.perf_counter() - t0,
    )
    yield Finished(result)


def _child_model(
    parent: SRModel,
    gen: nn.Module,
    name: str | None,
    cfg: FinetuneConfig,
    data: _Data,
    best_step: int,
    before: dict[str, float],
    after: dict[str, float],
    extra: dict[str, str],
) -> SRModel:
    """The fine-tuned generator as a new model; parent and run recorded in its metadata."""
    import json

    config = parent.config.model_copy(update={"name": name or f"{parent.name}-ft"})
    encoder = None if parent.encoder is None else copy.deepcopy(parent.encoder).cpu()
    meta = {
        "parent": parent.name,
        "parent_identity": parent.identity,
        "training_data": f"fine-tuned on {len(data.inputs)} region(s) ({cfg.mode})",
        "finetune_mode": cfg.mode,
        "finetune_steps": str(best_step),
        "finetune_config": cfg.model_dump_json(),
        "finetune_before": json.dumps(before),
        "finetune_after": json.dumps(after),
        "finetune_improved": "true",
        **{str(k): str(v) for k, v in extra.items()},
    }
    return SRModel(gen, config, encoder=encoder, metadata=meta).eval()


def run_finetune(
    model: SRModel,
    regions: Sequence[Any],
    *,
    mode: Mode | None = None,
    hr: Sequence[Any] | None = None,
    steps: int | None = None,
    config: FinetuneConfig | None = None,
    stop_event: threading.Event | None = None,
    callback: Callable[[FinetuneEvent], None] | None = None,
    device: str = "auto",
    name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> FinetuneResult:
    """Fine-tune `model` on regions (LR arrays, or (lr, hr) pairs in paired mode).

    Returns a FinetuneResult; `result.model` is a new model (the parent is never
    modified) or, when validation did not improve, the parent itself.
    """
    events = iter_finetune(
        model,
        regions,
        mode=mode,
        hr=hr,
        steps=steps,
        config=config,
        stop_event=stop_event,
        device=device,
        name=name,
        metadata=metadata,
    )
    result = None
    for ev in events:
        if callback is not None:
            callback(ev)
        if isinstance(ev, Finished):
            result = ev.result
    assert result is not None
    return result


def finetune(
    model: SRModel | str | os.PathLike[str], regions: Sequence[Any], **kwargs: Any
) -> SRModel:
    """Fine-tune `model` on regions and return a new model (the public contract).

    `model` is an SRModel, a bundled model name or a `.safetensors` path. Takes the
    arguments of `run_finetune` (mode, hr, steps, config, stop_event, callback,
    device, ...). The result is always a new object; the parent is never modified.
    Its `.metadata["finetune_improved"]` is "true" when held-out validation improved
    (the child records its parent and before / after metrics), and "false" when it
    did not: then it is a copy of the parent. `run_finetune` returns the full report.
    """
    if not isinstance(model, SRModel):
        from napari_srgan_sqe.models.modelfile import load_model

        model = load_model(model)
    result = run_finetune(model, regions, **kwargs)
    if result.improved:
        return result.model
    kept = copy.deepcopy(result.parent)
    kept.metadata["finetune_improved"] = "false"
    return kept


def seconds_to_gain(history: Sequence[dict[str, Any]], gain_db: float) -> float:
    """Seconds until validation PSNR first reached before + `gain_db` (inf if never)."""
    vals = [r for r in history if r.get("kind") == "val"]
    if not vals:
        return math.inf
    target = vals[0]["psnr"] + gain_db
    return next((r["elapsed_s"] for r in vals[1:] if r["psnr"] >= target), math.inf)
