"""The architecture registry: one line per network the package can build.

Each entry names the architecture (the `arch` tag of its config in `config.ArchConfig`),
its config class, its builder, and how its method is described (kind, tiling). A new
architecture is one module under `models/` (network, builder), its config class in
`config`, and one line here. The registry is a plain dict filled at import, with no
side effects; nothing else in the package dispatches on `arch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from napari_srgan_sqe.config import (
    ARCH_NAMES,
    GeneratorConfig,
    MedicalSRGANConfig,
    SR3Config,
    UnpairedConfig,
    ZSSRConfig,
)
from napari_srgan_sqe.models.blocks import Bicubic
from napari_srgan_sqe.models.generator import build_generator
from napari_srgan_sqe.models.medsrgan import build_medsrgan
from napari_srgan_sqe.models.method import Kind, MethodDescriptor, SRNetwork, Tiling
from napari_srgan_sqe.models.sr3 import build_sr3
from napari_srgan_sqe.models.unpaired import build_unpaired
from napari_srgan_sqe.models.zssr import build_zssr

__all__ = ["ARCHITECTURES", "Architecture", "build_network", "describe"]


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture and what kind of method it is."""

    name: str
    config: type
    build: Callable[[Any], nn.Module]
    kind: Kind = "deterministic"
    tiling: Tiling = "halo"
    summary: str = ""


ARCHITECTURES: dict[str, Architecture] = {
    "srresnet": Architecture(
        "srresnet", GeneratorConfig, build_generator, summary="SRGAN generator (x2 stages at HR)"
    ),
    "lrnet": Architecture(
        "lrnet", GeneratorConfig, build_generator, summary="SRGAN-family CNN, all at LR"
    ),
    "medsrgan": Architecture(
        "medsrgan", MedicalSRGANConfig, build_medsrgan, summary="multi-scale medical SRGAN"
    ),
    "zssr": Architecture(
        "zssr", ZSSRConfig, build_zssr, kind="zero-shot", summary="ZSSR image-specific CNN"
    ),
    "sr3": Architecture(
        "sr3",
        SR3Config,
        build_sr3,
        kind="stochastic",
        tiling="overlap",
        summary="SR3 conditional diffusion (DDIM)",
    ),
    "unpaired": Architecture(
        "unpaired", UnpairedConfig, build_unpaired, summary="correction net + SR net (Maeda 2020)"
    ),
}
assert tuple(ARCHITECTURES) == ARCH_NAMES, "config.ArchConfig and the registry disagree"


def build_network(cfg: Any) -> nn.Module:
    """The network for an architecture config (random init; seed torch before calling)."""
    arch = ARCHITECTURES.get(getattr(cfg, "arch", ""))
    if arch is None or not isinstance(cfg, arch.config):
        raise ValueError(f"no architecture for config {type(cfg).__name__} ({cfg!r})")
    net = arch.build(cfg)
    if not isinstance(net, SRNetwork):
        raise TypeError(f"architecture {arch.name!r} built a network without the SRNetwork API")
    return net


def describe(arch_name: str, net: nn.Module) -> MethodDescriptor:
    """The descriptor of a built network ('bicubic' for the weight-free baseline)."""
    if isinstance(net, Bicubic):
        return MethodDescriptor(arch="bicubic", scale=net.scale, halo=Bicubic.halo)
    arch = ARCHITECTURES[arch_name]
    assert isinstance(net, SRNetwork)
    return MethodDescriptor(
        arch=arch.name,
        scale=int(net.scale),
        halo=int(net.halo),
        tiling=arch.tiling,
        stochastic=arch.kind == "stochastic",
        steps=int(getattr(net, "steps", 1)),
        kind=arch.kind,
        macs_per_pixel=int(net.macs_per_pixel()),
        alignment=int(getattr(net, "alignment", 1)),
    )
