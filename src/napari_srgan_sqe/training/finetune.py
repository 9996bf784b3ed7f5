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
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from napari_srgan_sqe.config import (
    FINETUNE_LOSS_PRESETS,
    ConfigError,
    DegradationConfig,
    FinetuneConfig,
)
from napari_srgan_sqe.degradation import degrade, degrade_torch, degrade_with
from napari_srgan_sqe.io.errors import RegionError
from napari_srgan_sqe.losses import GeneratorObjective
from napari_srgan_sqe.metrics import psnr, ssim
from napari_srgan_sqe.models.method import SRNetwork, require_deterministic
from napari_srgan_sqe.models.modelfile import SRModel, lineage
from napari_srgan_sqe.training.regions import (
    Mode,
    Rect,
    RegionData,
    check_regions,
    cut_regions,
    min_region_size,
    prepare,
    sample_batch,
    train_width,
)

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

# Loss presets (`config.loss_preset`) offered for fine-tuning; the GAN term is dropped.
LOSS_PRESETS = FINETUNE_LOSS_PRESETS
# Generator children that form the residual trunk; everything after them is "last".


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


# ----------------------------------------------------------------------------- model parts
def last_layers(network: nn.Module) -> list[str]:
    """Names of the network's children in its 'last' parameter group (the layers after
    its trunk, as the architecture defines them: `parameter_groups()`)."""
    last = {id(p) for p in cast(SRNetwork, network).parameter_groups()["last"]}
    return [n for n, m in network.named_children() if any(id(p) in last for p in m.parameters())]


def _trainable(network: nn.Module, which: str) -> list[nn.Parameter]:
    """The parameters of group `which` ('all' or 'last') with gradients on; the rest off."""
    groups = cast(SRNetwork, network).parameter_groups()
    if which not in groups:
        raise ConfigError(f"this model has no parameter group {which!r}: {', '.join(groups)}")
    on = {id(p) for p in groups[which]}
    params = []
    for p in network.parameters():
        p.requires_grad_(id(p) in on)
        if id(p) in on:
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
    s = int(cast(SRNetwork, gen).scale)
    pad = np.pad(inp, ((halo, halo), (halo, halo), (0, 0)), mode="symmetric")
    x = torch.from_numpy(np.ascontiguousarray(pad.transpose(2, 0, 1)))[None].to(device)
    h, w = inp.shape[:2]
    y = gen(x)[0, :, s * halo : s * (halo + h), s * halo : s * (halo + w)]
    return (y.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def _validate(
    gen: nn.Module, data: RegionData, halo: int, device: torch.device
) -> dict[str, float]:
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
def _consistency(gen: nn.Module, data: RegionData, halo: int, device: torch.device) -> float:
    """Self-supervised guard at the true scale: mean PSNR of D_s(SR(LR stripe)) vs the LR
    stripe. Pseudo-pairs live one scale lower; a model can get better there and worse
    at the real scale, and then its SR stops agreeing with the LR it came from."""
    was_training = gen.training
    gen.eval()
    s = int(cast(SRNetwork, gen).scale)
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
    config: FinetuneConfig | None, mode: Mode | None, steps: int | None
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
    require_deterministic(model, "region fine-tuning (an L1 loss on one output)")
    data = prepare(regions, hr, cfg.mode, cfg, model.scale)
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
    if loss_cfg.lam_vgg > 0 and not loss_cfg.vgg_weights:
        notes.append(
            "VGG content loss skipped: no VGG19 weights file was given, so the srgan "
            "loss runs without the term the paper uses"
        )
        loss_cfg.lam_vgg = 0.0
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
    degradation: DegradationConfig | None = None,
    seed: Sequence[int] = (0,),
) -> tuple[float, dict[str, float]]:
    """One Adam step; returns plain floats so no device tensor outlives it."""
    x, y = (torch.from_numpy(a).to(device) for a in batch)
    if mode == "self-supervised":
        # Pseudo-LR from the pseudo-HR crop of the LR region, on 8-bit levels like the
        # real LR it stands in for (and coded like it with the scanner preset).
        if degradation is not None and degradation.preset == "scanner":
            x = degrade_with(x, degradation, s, seed=seed)
        else:
            x = degrade_torch(x, s, quantize=True)
    total, terms = objective(gen(x), y)
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return float(total.detach()), {k: float(v) for k, v in terms.items()}


def _run(
    parent: SRModel,
    data: RegionData,
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
                gen,
                opt,
                objective,
                sample_batch(data, mode, cfg, s, step),
                mode,
                s,
                device,
                cfg.degradation,
                (cfg.seed, step),
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
    if improved and best_state is not None and consistency_before is not None:
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
    if improved and best_state is not None:
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
    data: RegionData,
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
        **lineage(parent),
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
