"""Tiny real training runs for the tests: a few steps of a one-block network on small
crops of real H&E, so that training, resume and warm start run in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_srgan_sqe.config import TrainConfig


def tiny_train_config(data: Path, out: Path, **kw: Any) -> TrainConfig:
    """AE 2 + warm-up 3 + GAN 4 steps of a 1 x 8 lrnet on 32 px patches of `data`
    (validated on the same images); `kw` overrides any field."""
    base: dict[str, Any] = dict(
        data=[str(data)],
        val_data=[str(data)],
        model={"generator": {"arch": "lrnet", "n_blocks": 1, "channels": 8}},
        autoencoder={"channels": [8, 4]},
        discriminator={"channels": [8, 16]},
        patch_size=32,
        batch_size=2,
        ae_steps=2,
        warmup_steps=3,
        gan_steps=4,
        val_every=4,
        checkpoint_every=100,
        val_crop=64,
        out_dir=str(out),
    )
    base.update(kw)
    return TrainConfig(**base)
