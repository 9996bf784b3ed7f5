"""The explicit registry of bundled models.

A plain dictionary filled here, at import, with no side effects and no filesystem
scanning: what is registered can be read and grepped in this one file. It imports no
torch, so listing the models is instant. (Architectures are built by
`generator.build_generator` from `GeneratorConfig.arch`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUNDLED_MODELS",
    "CLEAN_MODEL",
    "DEFAULT_MODEL",
    "WEIGHTS_DIR",
    "BundledModel",
    "list_models",
    "model_for_coding",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class BundledModel:
    """A model shipped with the package (`file` is None for weight-free models)."""

    name: str
    file: str | None
    description: str
    licence: str
    scale: int = 4
    arch: str = "lrnet"
    """The network: an architecture name (`models.architectures`) or 'bicubic'."""
    kind: str = "deterministic"
    """'deterministic', 'stochastic' or 'zero-shot' (trained on the image it enhances)."""
    speed: str = "fast"
    """CPU speed class from the work per output pixel ('fast' < 50 k multiply-adds,
    'medium' < 250 k, 'slow' above; `MethodDescriptor.speed_class`)."""

    @property
    def path(self) -> Path | None:
        return None if self.file is None else WEIGHTS_DIR.parent / self.file


BUNDLED_MODELS: dict[str, BundledModel] = {
    "srgan-sqe-he-x4": BundledModel(
        name="srgan-sqe-he-x4",
        file="weights/srgan-sqe-he-x4.safetensors",
        description="SRGAN_SQE 12x48, 4x, for scanned slides, told how the slide is "
        "stored (codec, JPEG quality, colour coding): trained on the scanner degradation "
        "(JPEG / JPEG 2000 LR) of MoNuSeg 2018, BreCaHAD, MoNuSAC 2020, BCSS and CryoNuSeg "
        "H&E at 40x and 20x",
        licence="CC BY-NC-SA 4.0 (weights trained on MoNuSeg and MoNuSAC; non-commercial use)",
    ),
    "srgan-sqe-he-x4-clean": BundledModel(
        name="srgan-sqe-he-x4-clean",
        file="weights/srgan-sqe-he-x4-clean.safetensors",
        description="SRGAN_SQE 12x48, 4x, for lossless LR: trained on the clean D_s of "
        "MoNuSeg 2018 H&E at 40x and 20x",
        licence="CC BY-NC-SA 4.0 (weights trained on MoNuSeg; non-commercial use)",
    ),
    "fidelity-he-x4": BundledModel(
        name="fidelity-he-x4",
        file="weights/fidelity-he-x4.safetensors",
        description="The default's network and budget trained on the quasi-norm fidelity "
        "term alone (no manifold, SSIM or GAN terms), 4x, for comparison: scanner "
        "degradation of MoNuSeg 2018 H&E",
        licence="CC BY-NC-SA 4.0 (weights trained on MoNuSeg; non-commercial use)",
    ),
    "medsrgan-he-x4": BundledModel(
        name="medsrgan-he-x4",
        file="weights/medsrgan-he-x4.safetensors",
        description="Multi-scale medical SRGAN (Ahmad et al. 2022), 32 ch, 4x, for "
        "comparison: trained on the scanner degradation of MoNuSeg 2018 H&E (1400 steps)",
        licence="CC BY-NC-SA 4.0 (weights trained on MoNuSeg; non-commercial use)",
        arch="medsrgan",
    ),
    "srgan-he-x4": BundledModel(
        name="srgan-he-x4",
        file="weights/srgan-he-x4.safetensors",
        description="SRGAN (Ledig et al. 2017) SRResNet 8x32 with PReLU and batch norm, 4x, "
        "for comparison: squared error + GAN, without the VGG loss (no VGG19 weights); "
        "scanner degradation of MoNuSeg 2018 H&E (1200 steps)",
        licence="CC BY-NC-SA 4.0 (weights trained on MoNuSeg; non-commercial use)",
        arch="srresnet",
    ),
    "sr3-he-x4": BundledModel(
        name="sr3-he-x4",
        file="weights/sr3-he-x4.safetensors",
        description="SR3 conditional diffusion (Saharia et al. 2021), U-Net of 2.6 M "
        "parameters, 4 DDIM steps, 4x: each seed samples another plausible HR image; "
        "scanner degradation of MoNuSeg 2018 H&E at 40x and 20x (6000 steps)",
        licence="CC BY-NC-SA 4.0 (weights trained on MoNuSeg; non-commercial use)",
        arch="sr3",
        kind="stochastic",
        speed="slow",
    ),
    "bicubic-x4": BundledModel(
        name="bicubic-x4",
        file=None,
        description="Bicubic interpolation, 4x (baseline, no weights)",
        licence="BSD-3-Clause",
        arch="bicubic",
    ),
    "zssr-x4": BundledModel(
        name="zssr-x4",
        file=None,
        description="ZSSR (8 convs x 64 ch over bicubic, self-ensemble), 4x: trained on "
        "the slide itself from its LR (zero-shot); equal to bicubic until trained",
        licence="BSD-3-Clause",
        arch="zssr",
        kind="zero-shot",
        speed="slow",
    ),
}


DEFAULT_MODEL = "srgan-sqe-he-x4"
"""The model for scanned slides (JPEG / JPEG 2000 tiles): the default."""
CLEAN_MODEL = "srgan-sqe-he-x4-clean"
"""The model for losslessly stored LR (and LR simulated by the clean D_s)."""


def model_for_coding(
    codec: str | None, quality: int | None = None, *, preset: str | None = None
) -> str:
    """The bundled model to use by default for LR stored with `codec` ('jpeg',
    'jpeg2000', 'webp', 'none' for lossless, 'unknown' or None) at `quality` (JPEG's IJG
    quality, None when not known): the clean model only when the LR is known to be
    lossless, the scanner model otherwise, at every quality. The scanner model is
    conditioned on the coding (`models.coding`): it is told the codec and quality by
    whoever runs it (`super_resolve(..., coding=...)`; a Slide tells its own), so one
    model serves every lossy coding. LR simulated by a degradation `preset` gets the
    model trained on it ('clean' or 'scanner')."""
    if quality is not None and not (
        isinstance(quality, int | float) and not isinstance(quality, bool) and 1 <= quality <= 100
    ):
        raise ValueError(f"quality must be a number in 1..100 or None, got {quality!r}")
    if preset is not None:
        return CLEAN_MODEL if preset == "clean" else DEFAULT_MODEL
    return CLEAN_MODEL if codec == "none" else DEFAULT_MODEL


def list_models() -> list[dict]:
    """The bundled models as plain dicts (name, scale, arch, kind, speed, description,
    licence, available)."""
    out = []
    for m in BUNDLED_MODELS.values():
        path = m.path
        out.append(
            {
                "name": m.name,
                "scale": m.scale,
                "arch": m.arch,
                "kind": m.kind,
                "speed": m.speed,
                "description": m.description,
                "licence": m.licence,
                "file": None if path is None else str(path),
                "available": path is None or path.is_file(),
            }
        )
    return out
