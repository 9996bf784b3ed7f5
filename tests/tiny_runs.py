"""Tiny real training runs for the tests: a few steps of a one-block network on small
crops of real H&E, so that training, resume and warm start run in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_srgan_sqe.config import SR3Config, TrainConfig

TINY_SR3 = SR3Config(channels=8, mults=(1, 2), blocks=1, steps=3, overlap=8)
"""A small SR3 (8 channels, 2 levels, 3 sampling steps) for the tests."""


def tiny(seed: int = 0, scale: int = 4) -> Any:
    """A randomly initialised model with the 'tiny' generator preset, seeded: the same
    seed gives the same weights."""
    import torch

    from napari_srgan_sqe.config import ModelConfig, generator_preset
    from napari_srgan_sqe.models.modelfile import new_model

    torch.manual_seed(seed)
    return new_model(ModelConfig(name=f"tiny{seed}", generator=generator_preset("tiny", scale)))


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


def tiny_sr3(name: str = "tiny-sr3", steps: int = 3) -> Any:
    """A small SR3 model whose zero-initialised output layer is given weights, so that
    the U-Net's output (not only the starting noise) shapes each sample."""
    import torch

    from napari_srgan_sqe.config import ModelConfig
    from napari_srgan_sqe.models.modelfile import new_model

    torch.manual_seed(0)
    config = TINY_SR3.model_copy(update={"steps": steps})
    model = new_model(ModelConfig(name=name, variant="sr3", generator=config))
    with torch.no_grad():
        for m in model.generator.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.abs().sum():
                m.weight.normal_(0, 0.05)
                m.bias.normal_(0, 0.05)
    return model.eval()


def halo_probe(net: Any) -> tuple[dict[tuple[int, int], bool], dict[tuple[int, int], bool]]:
    """Whether a bump of one LR pixel changes the SR block of the centre pixel of a random
    float64 image, for LR pixels just outside `net.halo` (first dict) and on it (second),
    keyed by their offset (rows, columns) from the centre. `net` is in float64, eval mode."""
    import torch

    h, s = net.halo, net.scale
    size = 2 * h + 9
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    i = j = size // 2
    block = (slice(None), slice(None), slice(i * s, (i + 1) * s), slice(j * s, (j + 1) * s))

    def changes(offsets: list[tuple[int, int]]) -> dict[tuple[int, int], bool]:
        out = {}
        for di, dj in offsets:
            xp = x.clone()
            xp[:, :, i + di, j + dj] += 5.0
            out[(di, dj)] = not torch.equal(net.infer_batch(xp)[block], ref)
        return out

    with torch.no_grad():
        ref = net.infer_batch(x)[block]
        outside = changes([(h + 1, 0), (-h - 1, 0), (0, h + 1), (h + 1, -h - 1)])
        edge = changes([(h, 0), (-h, 0), (0, h), (0, -h)])
    return outside, edge
