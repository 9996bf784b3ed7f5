"""Typed, validated configuration for networks, losses and training.

Every config refuses unknown keys and out-of-range values with a message naming the
field, so a typo in a YAML/JSON file fails at once. Nothing here imports torch: the
GUI and the command line can read and validate configs without the heavy stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from napari_srgan_sqe.errors import UserFacingError

__all__ = [
    "ARCH_NAMES",
    "FINETUNE_LOSS_PRESETS",
    "ArchConfig",
    "AutoencoderConfig",
    "ConfigError",
    "CorruptionConfig",
    "DEGRADATION_PRESETS",
    "DegradationConfig",
    "DiscriminatorConfig",
    "FinetuneConfig",
    "GeneratorConfig",
    "LossConfig",
    "MedicalSRGANConfig",
    "ModelConfig",
    "RealLRSource",
    "TrainConfig",
    "UnpairedConfig",
    "UnpairedTrainConfig",
    "VARIANTS",
    "ZSSRConfig",
    "SR3Config",
    "degradation_preset",
    "generator_preset",
    "load_config",
    "loss_preset",
]

Scale = Annotated[int, Field(description="Integer up-scaling factor (2, 4 or 8).")]
Variant = Literal["srgan", "srgan_e", "srgan_qe", "srgan_sqe", "bicubic", "l1", "sr3"]
"""The loss presets of `loss_preset` (SPEC section 3), and "sr3" for diffusion models."""
VARIANTS: tuple[str, ...] = ("srgan", "srgan_e", "srgan_qe", "srgan_sqe", "bicubic", "l1")
FINETUNE_LOSS_PRESETS: tuple[str, ...] = ("srgan_sqe", "srgan_qe", "srgan_e", "srgan", "l1")
"""The loss presets (`loss_preset`) offered for fine-tuning, its GAN term dropped; here,
torch-free, so `srgan-sqe finetune --help` and the GUI list them without torch."""


class ConfigError(UserFacingError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class GeneratorConfig(_Strict):
    """The SRGAN-family generator G ('srresnet' or 'lrnet'): one member of `ArchConfig`."""

    arch: Literal["srresnet", "lrnet"] = "lrnet"
    """'srresnet': the SRGAN generator (head conv, residual blocks, log2(s) x2 up-sampling
    stages, final conv at HR resolution). 'lrnet': all work at LR resolution, ending in a
    conv to 3*s*s channels and PixelShuffle(s); the CPU-friendly preset."""
    scale: int = Field(4, ge=2, le=8)
    """Up-scaling factor. 'srresnet' needs a power of two."""
    n_blocks: int = Field(8, ge=0, le=64)
    """Number of residual blocks (conv3x3-BN-ReLU-conv3x3-BN + identity)."""
    channels: int = Field(48, ge=4, le=256)
    """Feature channels in the residual trunk."""
    head_kernel: int = Field(3, ge=1, le=11)
    """Kernel size of the first conv (odd). 9 in the SRGAN paper."""
    tail_kernel: int = Field(3, ge=1, le=11)
    """Kernel size of the final conv to RGB (odd); at HR resolution for 'srresnet'."""
    batch_norm: bool = False
    """Batch normalisation inside residual blocks (SRGAN uses it)."""
    bicubic_skip: bool = True
    """Add the bicubic up-sampling of the input, so the network learns the residual."""
    activation: Literal["relu", "prelu"] = "relu"
    """Activation of the trunk and up-sampling stages ('prelu' as in SRGAN; 'srresnet'
    only)."""
    coding: bool = False
    """lrnet only: condition the network on how its LR was stored (codec, JPEG quality
    and colour coding; `models.coding`), so that one network serves every coding."""

    @field_validator("head_kernel", "tail_kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("kernel size must be odd")
        return v

    @model_validator(mode="after")
    def _scale_fits_arch(self) -> GeneratorConfig:
        if self.arch == "srresnet" and self.scale & (self.scale - 1):
            raise ValueError(f"arch 'srresnet' needs a power-of-two scale, got {self.scale}")
        if self.arch == "lrnet" and self.activation != "relu":
            raise ValueError("activation 'prelu' is for arch 'srresnet'; 'lrnet' uses relu")
        return self

    def summary(self) -> str:
        """'lrnet (12 blocks x 48 ch, x4)': the network in a few words (no torch)."""
        return f"{self.arch} ({self.n_blocks} blocks x {self.channels} ch, x{self.scale})"


class MedicalSRGANConfig(_Strict):
    """The multi-scale medical SRGAN generator (Ahmad et al. 2022).

    Shallow features from three parallel residual paths with 3x3, 5x5 and 7x7 kernels,
    concatenated and fused; deep residual blocks with a long skip; x2 up-sampling; a
    small residual net at 2x; a second x2 up-sampling; a conv to RGB."""

    arch: Literal["medsrgan"] = "medsrgan"
    scale: Literal[4] = 4
    """Up-scaling factor: two x2 stages, so 4."""
    channels: int = Field(32, ge=4, le=256)
    """Feature channels of the shallow paths and the deep trunk."""
    n_blocks: int = Field(6, ge=0, le=64)
    """Deep residual blocks at LR resolution."""
    mid_blocks: int = Field(1, ge=0, le=16)
    """Residual blocks of the small net at 2x resolution."""
    mid_channels: int = Field(16, ge=4, le=256)
    """Channels of the net at 2x resolution (and of the 4x stage)."""
    bicubic_skip: bool = True
    """Add the bicubic up-sampling of the input (the network learns the residual)."""

    def summary(self) -> str:
        return f"medsrgan ({self.n_blocks} blocks x {self.channels} ch, x{self.scale})"


class ZSSRConfig(_Strict):
    """ZSSR's image-specific network (Shocher et al. 2018): the bicubic up-sampling of
    the input, then `n_layers` 3x3 convs (ReLU between) at the output resolution, added
    to the bicubic image. Trained on one image from its own LR ('zero-shot')."""

    arch: Literal["zssr"] = "zssr"
    scale: int = Field(4, ge=2, le=8)
    n_layers: int = Field(8, ge=2, le=16)
    channels: int = Field(64, ge=4, le=256)
    self_ensemble: bool = True
    """Average the outputs of the 8 flips / 90-degree rotations of the input at inference
    (geometric self-ensemble); training uses the plain network."""

    def summary(self) -> str:
        return f"zssr ({self.n_layers} layers x {self.channels} ch, x{self.scale})"


class SR3Config(_Strict):
    """SR3 conditional diffusion (Saharia et al. 2021): a U-Net denoiser of the residual
    over bicubic, conditioned on bicubic(LR), sampled with `steps` DDIM steps. Stochastic:
    each seed gives another plausible HR image."""

    arch: Literal["sr3"] = "sr3"
    scale: int = Field(4, ge=2, le=8)
    channels: int = Field(48, ge=8, le=256)
    """Width of the U-Net's first level (it runs at LR resolution on unshuffled HR)."""
    mults: tuple[int, ...] = Field((1, 2, 2), min_length=1, max_length=5)
    """Width multiplier of each U-Net level (each further level halves the resolution)."""
    blocks: int = Field(2, ge=1, le=8)
    """Residual blocks per level."""
    steps: int = Field(8, ge=1, le=1000)
    """DDIM sampling steps (more: slower, closer to the trained distribution)."""
    overlap: int = Field(16, ge=0, le=256)
    """LR px read around each tile and cropped after sampling ('overlap' tiling)."""
    residual_scale: float = Field(10.0, gt=0.0, le=1000.0)
    """The diffused residual is (HR - bicubic(LR)) times this (about unit spread)."""
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    """Scale of the starting noise at inference: 1 samples as trained; lower values trade
    the samples' diversity (and invented detail) for closeness to the LR's most likely
    image; 0 gives one deterministic image for every seed."""

    def summary(self) -> str:
        levels = "/".join(str(self.channels * m) for m in self.mults)
        return f"sr3 (U-Net {levels} ch, {self.steps} steps, x{self.scale})"


class UnpairedConfig(_Strict):
    """Pseudo-supervised unpaired SR (Maeda 2020): a correction network C maps the real LR
    of a slide (scanner blur, noise, JPEG) to clean LR, then an SR network U (an
    SRGAN-family generator) up-samples it: SR = U(C(x)). C is a residual CNN at LR
    resolution whose last conv starts at zero, so a fresh C is the identity."""

    arch: Literal["unpaired"] = "unpaired"
    correction_layers: int = Field(7, ge=2, le=16)
    """3x3 convs of C (ReLU between); its receptive-field radius in LR px."""
    correction_channels: int = Field(48, ge=4, le=256)
    """Feature channels of C."""
    sr: GeneratorConfig = Field(
        default_factory=lambda: GeneratorConfig(arch="lrnet", n_blocks=12, channels=48)
    )
    """The SR network U (default: the bundled model's lrnet 12 x 48)."""

    @property
    def scale(self) -> int:
        return self.sr.scale

    @property
    def n_blocks(self) -> int:
        """Residual blocks of the SR network U."""
        return self.sr.n_blocks

    @property
    def channels(self) -> int:
        """Trunk channels of the SR network U."""
        return self.sr.channels

    def summary(self) -> str:
        return (
            f"unpaired (correction {self.correction_layers} layers x "
            f"{self.correction_channels} ch + {self.sr.summary()})"
        )


ARCH_NAMES: tuple[str, ...] = ("srresnet", "lrnet", "medsrgan", "zssr", "sr3", "unpaired")


def _arch_tag(v: Any) -> str | None:
    """The discriminator of `ArchConfig`: a missing `arch` means 'lrnet' (the default)."""
    if isinstance(v, dict):
        return str(v.get("arch", "lrnet"))
    return getattr(v, "arch", None)


ArchConfig = Annotated[
    Annotated[GeneratorConfig, Tag("srresnet")]
    | Annotated[GeneratorConfig, Tag("lrnet")]
    | Annotated[MedicalSRGANConfig, Tag("medsrgan")]
    | Annotated[ZSSRConfig, Tag("zssr")]
    | Annotated[SR3Config, Tag("sr3")]
    | Annotated[UnpairedConfig, Tag("unpaired")],
    Discriminator(
        _arch_tag,
        custom_error_type="unknown_architecture",
        custom_error_message=(
            "unknown architecture: choose srresnet, lrnet, medsrgan, zssr, sr3 or unpaired"
        ),
    ),
]
"""The network of a model: one validated config per architecture, chosen by `arch`
('srresnet', 'lrnet', 'medsrgan', 'zssr', 'sr3', 'unpaired'). A field of another
architecture is refused. Each describes itself in a few words (`summary()`), so
listings never dispatch on `arch`."""


class AutoencoderConfig(_Strict):
    """The autoencoder whose frozen encoder E defines the manifold loss."""

    channels: list[int] = Field(default_factory=lambda: [64, 32, 8], min_length=1, max_length=5)
    """Channels of each encoder stage; every stage after the first halves the size."""
    blocks_per_stage: int = Field(1, ge=0, le=4)
    """Residual blocks in each stage."""


class DiscriminatorConfig(_Strict):
    """The discriminator D: strided convs with BN (not the first) and LeakyReLU(0.2)."""

    channels: list[int] = Field(
        default_factory=lambda: [32, 64, 128, 256], min_length=2, max_length=8
    )
    """Channels of each conv; every conv halves the spatial size."""
    residual: bool = False
    """Follow every strided conv with a residual block at its resolution (the deeper
    discriminator with residual skips of the medical SRGAN)."""


class LossConfig(_Strict):
    """Weights and parameters of the generator objective L_G (SPEC section 3)."""

    fidelity: Literal["quasi", "l1"] = "quasi"
    """Fidelity term: the quasi-norm L_Q (q=2 is MSE-like), or plain L1."""
    q: float = Field(0.8, gt=0.0, le=2.0)
    """Quasi-norm exponent of the fidelity term (0 < q <= 2)."""
    eps: float = Field(1e-4, gt=0.0, le=1.0)
    """Smoothing term of the quasi-norm for [0, 1] data."""
    q_manifold: float = Field(0.8, gt=0.0, le=2.0)
    """Quasi-norm exponent of the manifold term."""
    lam_q: float = Field(1.0, ge=0.0)
    lam_e: float = Field(0.1, ge=0.0)
    """Weight of the manifold loss through the frozen encoder (0 disables it)."""
    lam_s: float = Field(0.1, ge=0.0)
    """Weight of the SSIM perception loss (0 disables it)."""
    lam_a: float = Field(1e-3, ge=0.0)
    """Weight of the non-saturating adversarial loss (0 disables the GAN phase)."""
    lam_vgg: float = Field(0.0, ge=0.0)
    """Weight of the VGG19 content loss (srgan row; needs a local weights file)."""
    vgg_weights: str | None = None
    """Path of a local VGG19 .safetensors file for the srgan row."""
    ssim_window: int = Field(11, ge=3, le=31)
    ssim_sigma: float = Field(1.5, gt=0.0, le=10.0)


def loss_preset(variant: str, *, q: float = 0.8) -> LossConfig:
    """The loss weights of one row of the paper's comparison (SPEC section 3)."""
    if variant == "srgan":
        # VGG54 content loss with SRGAN's rescaling (1 / 12.75^2); needs local weights.
        return LossConfig(q=2.0, q_manifold=2.0, lam_e=0.0, lam_s=0.0, lam_vgg=6e-3)
    if variant == "srgan_e":
        return LossConfig(q=2.0, q_manifold=2.0, lam_s=0.0)
    if variant == "srgan_qe":
        return LossConfig(q=q, q_manifold=q, lam_s=0.0)
    if variant == "srgan_sqe":
        return LossConfig(q=q, q_manifold=q)
    if variant == "l1":
        return LossConfig(fidelity="l1", lam_e=0.0, lam_s=0.0, lam_a=0.0)
    if variant == "bicubic":
        return LossConfig(lam_q=0.0, lam_e=0.0, lam_s=0.0, lam_a=0.0)
    raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def generator_preset(preset: str, scale: int = 4) -> GeneratorConfig:
    """Named generator presets: 'paper' (SRGAN 16x64, 9x9 head/tail, BN, PReLU), 'light'
    (8x48, all at LR resolution, CPU-friendly) and 'tiny' (for tests)."""
    if preset == "paper":
        return GeneratorConfig(
            arch="srresnet",
            scale=scale,
            n_blocks=16,
            channels=64,
            head_kernel=9,
            tail_kernel=9,
            batch_norm=True,
            bicubic_skip=True,
            activation="prelu",
        )
    if preset == "light":
        return GeneratorConfig(arch="lrnet", scale=scale, n_blocks=8, channels=48)
    if preset == "tiny":
        return GeneratorConfig(arch="lrnet", scale=scale, n_blocks=2, channels=16)
    raise ConfigError(f"unknown generator preset {preset!r}; choose paper, light or tiny")


class ModelConfig(_Strict):
    """Everything needed to rebuild a model from its file alone."""

    name: str = Field("unnamed", min_length=1, max_length=200)
    variant: Variant = "srgan_sqe"
    generator: ArchConfig = Field(default_factory=GeneratorConfig)
    """The network, chosen by its `arch` field (see `ArchConfig`)."""
    autoencoder: AutoencoderConfig | None = None
    """Present when the file also carries the encoder (needed to fine-tune with L_E)."""

    @property
    def scale(self) -> int:
        return self.generator.scale


class CorruptionConfig(_Strict):
    """Corruption of a fraction of training pairs (robustness study, SPEC section 1)."""

    kind: Literal["none", "noise", "blur", "contrast"] = "none"
    fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction f of training pairs that are corrupted (chosen per pair, seeded)."""
    strength: float | None = None
    """noise: sigma in [0.02, 0.1]; blur: sigma in [1, 3] HR px; contrast: factor in
    [0.5, 0.8]. None picks the middle of the range."""
    target: Literal["hr", "pair"] = "pair"
    """'pair': corrupt HR before D_s so LR inherits it; 'hr': corrupt the HR target only."""

    @model_validator(mode="after")
    def _strength_in_range(self) -> CorruptionConfig:
        ranges = {"noise": (0.02, 0.1), "blur": (1.0, 3.0), "contrast": (0.5, 0.8)}
        if self.kind in ranges and self.strength is not None:
            lo, hi = ranges[self.kind]
            if not lo <= self.strength <= hi:
                raise ValueError(
                    f"strength for {self.kind} must lie in [{lo}, {hi}], got {self.strength}"
                )
        return self


DegradationPreset = Literal["clean", "scanner"]
DEGRADATION_PRESETS: tuple[DegradationPreset, ...] = ("clean", "scanner")
JpegColour = Literal["ycbcr420", "ycbcr444", "rgb"]


def _all_jpeg_colours() -> list[JpegColour]:
    return ["ycbcr420", "rgb"]


class DegradationConfig(_Strict):
    """How LR is made from HR (SPEC section 1): `clean` is the reference D_s exactly;
    `scanner` is a seeded random chain as a slide scanner and its file format make LR:
    focus blur, the s x s reduction, sensor noise, 8-bit rounding, lossy coding.

    The fields below the preset describe the scanner chain; `clean` ignores them.
    Every stage can be switched off (blur, noise, or both codec fractions at 0)."""

    preset: DegradationPreset = "clean"
    blur: bool = True
    """Draw the anti-aliasing blur per patch instead of D_s's fixed sigma (s - 1) / 2."""
    blur_factor: tuple[float, float] = (0.8, 1.25)
    """Range of the blur sigma as a multiple of D_s's sigma (focus variation)."""
    anisotropy: float = Field(0.2, ge=0.0, le=0.9)
    """Largest relative difference of the two principal sigmas (the kernel is rotated
    by a random angle); 0 keeps the blur isotropic."""
    noise: bool = True
    """Add sensor noise to the LR before rounding."""
    noise_sigma: tuple[float, float] = (0.0, 2.0 / 255.0)
    """Range of the Gaussian noise sigma ([0, 1] data)."""
    noise_shot: tuple[float, float] = (0.0, 0.008)
    """Range of k in the signal-dependent noise sigma = k * sqrt(value)."""
    jpeg_fraction: float = Field(0.7, ge=0.0, le=1.0)
    """Fraction of patches whose LR is JPEG-coded."""
    jpeg_quality: tuple[int, int] = (30, 95)
    """Range of the IJG JPEG quality (drawn uniformly)."""
    jpeg_colours: list[JpegColour] = Field(default_factory=_all_jpeg_colours, min_length=1)
    """JPEG colour modes drawn from: YCbCr 4:2:0 (most scanners), YCbCr 4:4:4 (no
    chroma subsampling) and RGB without subsampling (Aperio "JPEG/RGB"). The default
    leaves 4:4:4 out, as runs written before it was added did."""
    jpeg2000_fraction: float = Field(0.2, ge=0.0, le=1.0)
    """Fraction of patches whose LR is JPEG 2000-coded."""
    jpeg2000_psnr: tuple[float, float] = (26.0, 37.0)
    """Range of the JPEG 2000 target PSNR (dB) of the coded LR. A target PSNR codes a
    small training patch as hard as a whole tile; on whole LR images of the training
    data, Aperio's rates of 10:1 to 30:1 (its Q=70 is about 17:1) give 26-37 dB."""

    @model_validator(mode="after")
    def _ranges(self) -> DegradationConfig:
        for name in ("blur_factor", "noise_sigma", "noise_shot", "jpeg_quality", "jpeg2000_psnr"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower end {lo} is above the upper end {hi}")
        if self.blur_factor[0] <= 0:
            raise ValueError("blur_factor must be positive")
        if self.noise_sigma[0] < 0 or self.noise_shot[0] < 0 or self.noise_sigma[1] > 0.1:
            raise ValueError("noise ranges must lie in [0, 0.1]")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError("jpeg_quality must lie in 1..100")
        if not 10.0 <= self.jpeg2000_psnr[0] <= self.jpeg2000_psnr[1] <= 80.0:
            raise ValueError("jpeg2000_psnr must lie in 10..80 dB")
        if self.jpeg_fraction + self.jpeg2000_fraction > 1.0 + 1e-9:
            raise ValueError(
                f"jpeg_fraction + jpeg2000_fraction = "
                f"{self.jpeg_fraction + self.jpeg2000_fraction:g} exceeds 1"
            )
        return self


Degradation = Annotated[
    DegradationConfig,
    BeforeValidator(lambda v: {"preset": v} if isinstance(v, str) else v),
]
"""A DegradationConfig field that also accepts a bare preset name ("scanner")."""


def degradation_preset(name: str | DegradationConfig) -> DegradationConfig:
    """The named degradation preset ('clean' or 'scanner'); a config passes through."""
    if isinstance(name, DegradationConfig):
        return name
    if name not in DEGRADATION_PRESETS:
        raise ConfigError(
            f"unknown degradation preset {name!r}; choose {' or '.join(DEGRADATION_PRESETS)}"
        )
    return DegradationConfig(preset=name)


class RealLRSource(_Strict):
    """Real LR to adapt to: a slide (level 0 is read in small windows) or an image."""

    path: str = Field(min_length=1)
    """A slide (.svs, .ndpi, .tif, ...), an image (PNG, JPEG) or a folder of PNG / JPEG
    images. Relative paths are resolved against the config file's folder."""
    regions: list[tuple[int, int, int, int]] = Field(default_factory=list)
    """Rectangles (x, y, w, h) in level-0 px to draw patches from; none: the whole image."""

    @field_validator("regions")
    @classmethod
    def _positive(cls, v: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
        for x, y, w, h in v:
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"region {(x, y, w, h)}: x, y must be >= 0 and w, h > 0")
        return v


def _as_source(v: Any) -> Any:
    return {"path": v} if isinstance(v, str) else v


class UnpairedTrainConfig(_Strict):
    """The 'unpaired' recipe (Maeda 2020): the real-LR source and the loss weights.

    Clean HR patches y come from the run's `data`, their clean LR y_d = D_s(y) from the
    loop; real LR patches x are drawn from `real_lr`. C maps real to clean LR, G_yx
    clean to real-looking LR (training only); one discriminator per LR domain."""

    real_lr: list[Annotated[RealLRSource, BeforeValidator(_as_source)]] = Field(min_length=1)
    """Slides or images whose LR the model adapts to (a bare path is accepted)."""
    real_patch_size: int | None = Field(None, ge=8, le=512)
    """Side of the real-LR patches in LR px (default: patch_size / scale, the clean LR's)."""
    real_batch_size: int | None = Field(None, ge=1, le=1024)
    """Real-LR patches per step (default: batch_size)."""
    max_background: float = Field(0.5, ge=0.0, le=1.0)
    """A real patch with more than this fraction of near-white pixels is drawn again."""
    lam_adv: float = Field(1.0, ge=0.0)
    """Adversarial terms on both LR domains (C(x) vs y_d, G_yx(y_d) vs x)."""
    lam_cyc: float = Field(1.0, ge=0.0)
    """One-way cycle |C(G_yx(y_d)) - y_d|."""
    lam_idt: float = Field(1.0, ge=0.0)
    """Identity |C(y_d) - y_d|: C leaves clean LR alone."""
    lam_geo: float = Field(1.0, ge=0.0)
    """Geometric ensemble |C(x) - mean_T T^-1 C(T x)| over the 8 flips / rotations."""
    lam_sr: float = Field(1.0, ge=0.0)
    """L1 of U(C(G_yx(y_d))) against y (the SR net on pseudo-clean LR)."""
    train_sr: bool = True
    """Train the SR network U too; False trains the correction only (U stays as loaded)."""
    d_lr: float | None = Field(None, gt=0.0, le=1.0)
    """Learning rate of the discriminators (default: `lr`)."""


class TrainConfig(_Strict):
    """A training run: data, model, objective, schedule."""

    data: list[str] = Field(min_length=1)
    """Folders of HR images (PNG/JPEG/TIFF/WebP) or single image files. Relative paths are
    resolved against the config file's folder."""
    split_file: str | None = None
    """JSON file with "train" and "val" lists of file names (found in `data`); without
    it every image trains and `val_data` validates."""
    val_data: list[str] = Field(default_factory=list)
    """Folders or files of held-out HR images (when there is no split file)."""
    val_images: int = Field(6, ge=0)
    """Cap on validation images used during training."""
    val_crop: int = Field(384, ge=32)
    """Side of the centre crop of each validation image (HR px), to keep validation cheap."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    corruption: CorruptionConfig = Field(default_factory=CorruptionConfig)
    patch_size: int = Field(256, ge=16, le=2048)
    """HR patch size; LR patches are patch_size / scale."""
    batch_size: int = Field(8, ge=1, le=1024)
    ae_steps: int = Field(500, ge=0)
    """Autoencoder pre-training steps (skipped when lam_e is 0)."""
    warmup_steps: int = Field(2000, ge=0)
    """Fidelity-only generator steps before the GAN phase."""
    gan_steps: int = Field(2000, ge=0)
    """Alternating D / G steps (skipped when lam_a is 0: then plain generator steps)."""
    recipe: Literal["auto", "srgan_sqe", "diffusion", "unpaired"] = "auto"
    """How the model trains (`training.recipes`): 'srgan_sqe' (autoencoder, warm-up and GAN
    phases, the fields above), 'diffusion' (SR3: `steps` steps of the denoising loss),
    'unpaired' (Maeda 2020: `steps` steps adapting to the real LR named in `unpaired`);
    'auto' picks by the architecture ('diffusion' for arch 'sr3', 'unpaired' for arch
    'unpaired')."""
    steps: int | None = Field(None, ge=0)
    """Training steps of the single-phase recipes ('diffusion', 'unpaired')."""
    unpaired: UnpairedTrainConfig | None = None
    """The real LR and the loss weights of the 'unpaired' recipe."""
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    warmup_lr: float = Field(2e-4, gt=0.0, le=1.0)
    lr_final: float | None = Field(None, gt=0.0, le=1.0)
    """If set, the GAN-phase learning rates of G and D decay linearly from `lr` to
    `lr_final` over the GAN phase (a function of the step, so resuming stays exact)."""
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    device: str = "auto"
    num_threads: int | None = Field(None, ge=1)
    data_workers: int = Field(0, ge=0, le=256)
    """Processes that make the next batches (patches, degradation, coding) while the
    model trains: 0 makes them in the training process. Batches are the same for any
    number (they depend on seed and step only); worth it on a GPU, where the scanner
    chain's coding, not the network, bounds the step rate."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """Arithmetic of the networks' forward passes while training: 'bf16' runs the
    generator and discriminator under bfloat16 autocast (weights, optimizer moments,
    losses and validation stay float32). About 2-3x faster on CPUs with AMX or
    AVX512-BF16 and on recent GPUs, but several times slower on a CPU without bf16
    instructions, where it is emulated; 'auto' takes bf16 only where the device has
    them (`training.recipes.bf16_native`). docs/training.md gives the measured cost."""
    channels_last: bool = False
    """Keep the networks and batches in channels_last memory layout (faster
    convolutions on CPUs with oneDNN, and on GPUs under bf16)."""
    checkpoint_every: int = Field(500, ge=1)
    val_every: int = Field(500, ge=1)
    out_dir: str = "runs/default"
    augment: bool = True
    """Random flips and 90-degree rotations of training patches."""
    degradation: Degradation = Field(default_factory=DegradationConfig)
    """How training LR is made: `{"preset": "clean"}` (D_s, the default) or
    `{"preset": "scanner"}` (blur, noise and JPEG / JPEG 2000 coding drawn per patch);
    a bare preset name is accepted too."""
    lower_mag_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of HR patches taken at half the images' magnification (a 2p x 2p crop
    reduced 2x by area: 20x patches from 40x images), so that the model also learns
    lower-magnification slides."""
    stain_jitter: float = Field(0.0, ge=0.0, le=0.5)
    """Stain augmentation (HED jitter, Tellez et al. 2019): each HR patch's haematoxylin,
    eosin and residual optical densities are scaled by a factor drawn from
    [1 - stain_jitter, 1 + stain_jitter] and shifted by one drawn from
    [-stain_jitter, stain_jitter] x 0.1, before the LR is made from it, so that the
    model meets the stain variation of other labs and scanners. 0: off; 0.05 is
    'HED-light', 0.2 'HED-strong'."""
    coding_hidden: float = Field(0.25, ge=0.0, le=1.0)
    """For a coding-conditioned generator (`GeneratorConfig.coding`) on the scanner
    preset: fraction of patches whose coding the network is told only in part (codec,
    quality or colour coding withheld), so that it does well on slides that do not
    record them."""
    quantize_lr: bool = True
    """Round the LR inputs made by D_s to 8-bit levels, as LR images and slides are
    stored, so the network trains on the inputs it will see."""
    ema_decay: float | None = Field(None, ge=0.9, lt=1.0)
    """If set, keep an exponential moving average of the generator's weights, updated
    after every generator step; validation and the written model use the average
    (e.g. 0.999: an average over about the last 1000 steps)."""
    init_from: str | None = None
    """Warm start: a training checkpoint written by `srgan-sqe train` (its G, autoencoder
    and discriminator weights are loaded where this run has them) or a model name or
    `.safetensors` model file (its generator, and its encoder when it carries one).
    The architecture must match. Optimizers and the step counter start fresh, so
    set `ae_steps` (and `warmup_steps`) to 0 when the checkpoint already covers them.
    Relative paths are resolved against the config file's folder."""

    @model_validator(mode="after")
    def _patch_divisible(self) -> TrainConfig:
        s = self.model.generator.scale
        if self.patch_size % s:
            raise ValueError(f"patch_size {self.patch_size} is not a multiple of the scale {s}")
        return self


# Fields added to TrainConfig after runs were first written, with the value that
# reproduces what a run written before them did (their defaults are for new runs).
_TRAIN_FIELDS_ADDED_LATER: dict[str, Any] = {
    "quantize_lr": False,
    "degradation": {"preset": "clean"},
    "lower_mag_fraction": 0.0,
    "stain_jitter": 0.0,
}


def saved_train_config(text: str, *, source: str = "checkpoint") -> TrainConfig:
    """The TrainConfig stored (as JSON) in a checkpoint; fields it predates keep the
    behaviour the run had, so an older run resumes as it was trained."""
    data = json.loads(text)
    for key, value in _TRAIN_FIELDS_ADDED_LATER.items():
        data.setdefault(key, value)
    return validate(TrainConfig, data, source=source)


class FinetuneConfig(_Strict):
    """Region fine-tuning (paired or self-supervised)."""

    mode: Literal["paired", "self-supervised"] = "paired"
    steps: int = Field(200, ge=1, le=100_000)
    lr: float = Field(5e-5, gt=0.0, le=1.0)
    batch_size: int = Field(4, ge=1, le=256)
    patch_size: int = Field(96, ge=16, le=1024)
    """HR patch size for paired mode; in self-supervised mode, the size of the
    pseudo-HR patch cut from the LR region."""
    train_layers: Literal["all", "last"] = "all"
    """'last': only the layers after the residual trunk are trained."""
    val_fraction: float = Field(0.25, ge=0.05, le=0.5)
    """Part of each region held out for validation (a stripe on its right side)."""
    loss: LossConfig = Field(default_factory=lambda: LossConfig(lam_a=0.0))
    seed: int = Field(0, ge=0, le=2**32 - 1)
    val_every: int = Field(25, ge=1)
    """Validate on the held-out stripes every this many steps (and after the last)."""
    max_minutes: float | None = Field(None, gt=0.0)
    """Stop after this many minutes even if steps remain (the best state is kept)."""
    degradation: Degradation = Field(default_factory=DegradationConfig)
    """How pseudo-LR is made from the pseudo-HR in self-supervised mode (and LR from HR
    in paired mode when no LR is given): 'clean' (D_s) or 'scanner' (as a scanner codes
    its slides: use it for JPEG / JPEG 2000 slides). A bare preset name is accepted."""


def load_config(path: str | Path, cls: type[BaseModel] = TrainConfig) -> Any:
    """Read a JSON or YAML config file and validate it, with readable errors."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
    return validate(cls, data, source=str(path))


def _loc_part(part: object) -> str:
    """A field name or list index of an error's location as the user reads it; a key
    with characters that would garble the line (control characters, dots) is quoted."""
    text = str(part)
    if text and text.isprintable() and "." not in text and ":" not in text:
        return text
    return json.dumps(text)


def validate(cls: type[BaseModel], data: Any, *, source: str = "config") -> Any:
    """Validate `data` as `cls`; raise ConfigError naming each bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(_loc_part(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"invalid {cls.__name__} in {source}:\n" + "\n".join(lines)) from None
