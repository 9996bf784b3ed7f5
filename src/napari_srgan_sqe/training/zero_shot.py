"""ZSSR as a method of its own: train an image-specific network on the LR alone.

Zero-shot super-resolution (Shocher et al. 2018) needs no training set: the LR
region itself is the "HR" (augmented crops of it, flipped and rotated), a further
4x degradation of those crops is the "LR", and a small network (`models.zssr`, 8
convs x 64 ch over bicubic) learns that mapping. Applied to the real LR, with the
geometric self-ensemble, it super-resolves by the same factor.

The paper trains with L1 and Adam at 1e-3 for up to 3000 iterations. Within the few
hundred steps a CPU affords, L1 left the held-out PSNR where bicubic has it (21.02 ->
21.02 dB on a sample-slide region, 400 steps), while a squared error at 3e-4 raised it
(21.02 -> 21.52 dB in 200 steps; +0.79 dB against the true HR): that is the recipe here.

This is the self-supervised loop of `training.finetune` started from a fresh ZSSR
network, so it has the same events, stop, time limit, held-out stripe and guard:
a result that does not beat the start (which equals bicubic) on the held-out stripe
is not kept. The pseudo-LR is made like the slide's real LR: `clean` (D_s) for
lossless slides, `scanner` (coded like a scanned slide) for JPEG / JPEG 2000 ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from napari_srgan_sqe.config import (
    ConfigError,
    Degradation,
    FinetuneConfig,
    LossConfig,
    ModelConfig,
    ZSSRConfig,
)
from napari_srgan_sqe.models.modelfile import SRModel, load_model, new_model
from napari_srgan_sqe.training.finetune import FinetuneEvent, Finished, iter_finetune

__all__ = ["ZERO_SHOT_MODEL", "iter_zero_shot", "new_zssr", "zero_shot", "zero_shot_config"]

ZERO_SHOT_MODEL = "zssr-x4"
"""The bundled, weight-free starting point of zero-shot training (equal to bicubic)."""


def zero_shot_config(
    steps: int = 300,
    *,
    degradation: Degradation | str = "clean",
    seed: int = 0,
    max_minutes: float | None = None,
    batch_size: int = 8,
    patch_size: int = 48,
) -> FinetuneConfig:
    """The zero-shot recipe as a self-supervised fine-tune: squared error (the quasi-
    norm with q = 2), Adam at 3e-4, all layers."""
    return FinetuneConfig(
        mode="self-supervised",
        steps=steps,
        lr=3e-4,
        batch_size=batch_size,
        patch_size=patch_size,
        train_layers="all",
        loss=LossConfig(fidelity="quasi", q=2.0, lam_e=0.0, lam_s=0.0, lam_a=0.0),
        seed=seed,
        val_every=max(10, steps // 6),
        max_minutes=max_minutes,
        degradation=degradation,  # a preset name is accepted
    )


def new_zssr(
    scale: int = 4, *, name: str = "zssr", network: ZSSRConfig | None = None, seed: int = 0
) -> SRModel:
    """A fresh ZSSR model, initialised from `seed` without touching torch's global
    random state (its output equals bicubic until it is trained)."""
    import torch

    cfg = network or ZSSRConfig(scale=scale)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return new_model(ModelConfig(name=name, variant="l1", generator=cfg))


def iter_zero_shot(
    regions: Sequence[Any],
    *,
    model: SRModel | str | None = None,
    config: FinetuneConfig | None = None,
    stop_event: threading.Event | None = None,
    device: str = "auto",
    name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Iterator[FinetuneEvent]:
    """The event stream of zero-shot training on LR `regions` (arrays or lazy levels).

    `model`: the ZSSR model to start from (default: a fresh one, `ZERO_SHOT_MODEL`).
    Raises ConfigError at once for a model that is not zero-shot."""
    start = load_model(model) if isinstance(model, str) else (model or new_zssr())
    if start.descriptor.kind != "zero-shot":
        raise ConfigError(
            f"model {start.name!r} is not a zero-shot method (its kind is "
            f"{start.descriptor.kind}); use `finetune` to adapt it, or start from "
            f"{ZERO_SHOT_MODEL}"
        )
    meta = {"zero_shot": "true", **(metadata or {})}
    return iter_finetune(
        start,
        regions,
        mode="self-supervised",
        config=config or zero_shot_config(),
        stop_event=stop_event,
        device=device,
        name=name or "zssr",
        metadata=meta,
    )


def zero_shot(regions: Sequence[Any], **kwargs: Any) -> SRModel:
    """Train ZSSR on LR `regions` and return the model (the fresh start, equal to
    bicubic, when training did not beat it on the held-out stripe)."""
    result = None
    for ev in iter_zero_shot(regions, **kwargs):
        if isinstance(ev, Finished):
            result = ev.result
    assert result is not None
    return result.model
