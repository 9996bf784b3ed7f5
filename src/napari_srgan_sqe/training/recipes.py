"""Training recipes: what one step of a method's training does.

`training.trainer.Trainer` is the one loop every method trains in: it owns the data
(batches that depend only on (seed, step)), validation, the log, the event stream,
checkpoints (safetensors: the recipe's modules and optimizer moments) and exact
resume. A recipe owns the method-specific part, behind the `Recipe` protocol: its
networks and optimizers (by name, for the checkpoint), its phases and step count,
one optimisation step on a batch, and the network the model file ships.

Recipes:
- `SRGANRecipe` ('srgan_sqe'): the SRGAN family of SPEC section 3 (autoencoder
  pre-training, fidelity warm-up, GAN phase), for srresnet / lrnet / medsrgan / zssr.
- `DiffusionRecipe` ('diffusion'): SR3; the denoiser learns v at random noise
  levels (one phase of `TrainConfig.steps` steps), with an EMA of its weights.
- `UnpairedRecipe` ('unpaired'): pseudo-supervised unpaired SR (Maeda 2020) for arch
  'unpaired': a correction net learns real LR (patches of the slides in
  `TrainConfig.unpaired`) -> clean LR, the SR net learns on pseudo-clean LR.
A recipe is chosen by `TrainConfig.recipe` ('auto': by the architecture) and built as
`cls(cfg, device, base)`, `base` being the config file's folder (for the files a
recipe reads).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import torch
from torch import nn

from napari_srgan_sqe.config import ConfigError, GeneratorConfig, TrainConfig, UnpairedConfig
from napari_srgan_sqe.io.checkpoints import (
    CheckpointError,
    read_safetensors,
    read_safetensors_metadata,
)
from napari_srgan_sqe.losses import (
    GeneratorObjective,
    discriminator_loss,
    l1_loss,
    mse_loss,
    quasi_norm_loss,
)
from napari_srgan_sqe.models.architectures import build_network
from napari_srgan_sqe.models.autoencoder import build_autoencoder
from napari_srgan_sqe.models.discriminator import build_discriminator
from napari_srgan_sqe.models.modelfile import ModelFileError, SRModel, load_model
from napari_srgan_sqe.models.sr3 import SR3Net
from napari_srgan_sqe.models.unpaired import DegradationNet, PatchDiscriminator, UnpairedSR
from napari_srgan_sqe.models.zssr import self_ensemble
from napari_srgan_sqe.training.data import resolve_path
from napari_srgan_sqe.training.state import load_grown, unpack_modules
from napari_srgan_sqe.training.unpaired_data import RealLRSampler, open_real_lr

__all__ = [
    "RECIPES",
    "DiffusionRecipe",
    "Recipe",
    "SRGANRecipe",
    "TrainingBatch",
    "UnpairedRecipe",
    "make_recipe",
    "recipe_name",
]

log = logging.getLogger(__name__)


@dataclass
class TrainingBatch:
    """One batch on the device: HR patches and the LR made from them (NCHW, [0, 1])."""

    hr: torch.Tensor
    lr: torch.Tensor
    coding: torch.Tensor | None = None
    """(N, CODING_FEATURES): how each LR was stored, for a coding-conditioned network."""


class Recipe(Protocol):
    """The method-specific part of training (see the module docstring)."""

    name: str
    total: int
    init_source: str | None

    def modules(self) -> dict[str, nn.Module | None]:
        """Every network whose weights the checkpoint holds, by name."""
        ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer | None]:
        """Every optimizer whose state the checkpoint holds, by name."""
        ...

    def phase(self, step: int) -> str:
        """The phase `step` falls in (shown in progress and the log)."""
        ...

    def validates(self, step: int) -> bool:
        """Whether SR can be validated after `step` (not during pre-training)."""
        ...

    def train_step(self, step: int, batch: TrainingBatch) -> dict[str, float]:
        """One optimisation step; the losses to log."""
        ...

    def network(self) -> nn.Module:
        """The network the model file ships (the weight average when there is one)."""
        ...

    def encoder(self) -> nn.Module | None:
        """The frozen encoder the model file carries, if any."""
        ...

    def check_resume(self, saved: TrainConfig, step: int, path: Path) -> None:
        """ConfigError when a checkpoint at `step` of `saved` cannot continue here."""
        ...

    def load_weights(self, path: Path, source: str) -> str:
        """Load `init_from` (a training checkpoint at `path`, else a model file or bundled
        name) where this recipe has the networks; what was loaded, for provenance."""
        ...

    def provenance(self) -> dict[str, str]:
        """Metadata the model file records about how it was trained."""
        ...


def recipe_name(cfg: TrainConfig) -> str:
    """The recipe a config trains with ('auto' resolved by the architecture)."""
    if cfg.recipe != "auto":
        return cfg.recipe
    arch = cfg.model.generator.arch
    return {"sr3": "diffusion", "unpaired": "unpaired"}.get(arch, "srgan_sqe")


def make_recipe(cfg: TrainConfig, device: torch.device, base: Path) -> Recipe:
    """The recipe of `cfg`, with its networks on `device` (warm-started if asked)."""
    name = recipe_name(cfg)
    cls = RECIPES[name]
    # a recipe reading files named in the config resolves them against its folder
    recipe: Recipe = cls(cfg, device, base)
    if cfg.init_from:
        recipe.init_source = warm_start(recipe, cfg.init_from, base)
        log.info("warm start from %s", recipe.init_source)
    return recipe


# -- shared pieces ---------------------------------------------------------------------
def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware: a CUDA GPU that supports it, or a
    CPU with AVX512-BF16 or AMX (oneDNN's own test). Elsewhere bf16 is emulated and
    slower than float32, so TrainConfig.precision 'auto' keeps float32 there."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _frozen_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin.eval()


_M = TypeVar("_M", bound=nn.Module)


def _placed(module: _M, device: torch.device, channels_last: bool) -> _M:
    """`module` on `device`, in channels_last memory layout when asked."""
    module = module.to(device)
    if channels_last:
        # torch's Module.to overloads omit memory_format, which it accepts.
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


@torch.no_grad()
def _update_average(avg_net: nn.Module | None, net: nn.Module, decay: float | None) -> None:
    """avg <- decay * avg + (1 - decay) * net, buffers copied."""
    if avg_net is None or decay is None:
        return
    w = 1.0 - float(decay)
    for avg, p in zip(avg_net.parameters(), net.parameters(), strict=True):
        avg.lerp_(p.detach(), w)
    for avg_b, b in zip(avg_net.buffers(), net.buffers(), strict=True):
        avg_b.copy_(b)


def _linear_lr(start_lr: float, final: float | None, step: int, start: int, n: int) -> float:
    """Learning rate at `step` of a phase of `n` steps from `start` (linear to `final`)."""
    if final is None or n <= 1:
        return start_lr
    t = min(max((step - start) / (n - 1), 0.0), 1.0)
    return start_lr + t * (final - start_lr)


def _first_mismatch(exc: RuntimeError) -> str:
    """The first concrete line of a `load_state_dict` error (which layer does not fit)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "shape mismatch")
    return detail if len(detail) <= 300 else detail[:297] + "..."


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is a training checkpoint written by the Trainer."""
    try:
        meta = read_safetensors_metadata(path)
    except CheckpointError:  # not a safetensors file: load_model explains what it is
        return False
    return meta.get("kind") == "training-checkpoint"


def warm_start(recipe: Recipe, source: str, base: Path) -> str:
    """Load weights from a training checkpoint or a model (`TrainConfig.init_from`) into
    the recipe's networks where it has them; returns what was loaded, for provenance."""
    path = resolve_path(base, source)
    try:
        what = recipe.load_weights(path, source)
    except RuntimeError as exc:  # load_state_dict: names or shapes differ
        theirs = ""
        if not is_checkpoint(path):  # a model file says what it is
            with contextlib.suppress(ConfigError):
                init = _load_init_model(path, source)
                ours = getattr(getattr(recipe, "cfg", None), "model", None)
                theirs = f"it is {_generator_text(init.config)}" + (
                    f", this run's is {_generator_text(ours)}" if ours is not None else ""
                )
        raise ConfigError(
            f"init_from {source}: its weights do not fit this run's architecture"
            + (f" ({theirs})" if theirs else "")
            + f": {_first_mismatch(exc)}"
        ) from None
    modules = recipe.modules()
    G, G_ema = modules["G"], modules.get("G_ema")
    if G_ema is not None and G is not None:  # the average starts from the loaded weights
        G_ema.load_state_dict(G.state_dict())
    return what


def _generator_text(model_cfg: Any) -> str:
    """'lrnet, 12 blocks x 48 channels, x4' from a ModelConfig (the fields it has)."""
    gen = model_cfg.generator
    parts = [str(getattr(gen, "arch", model_cfg.variant))]
    blocks, channels = getattr(gen, "n_blocks", None), getattr(gen, "channels", None)
    if blocks is not None and channels is not None:
        parts.append(f"{blocks} blocks x {channels} channels")
    parts.append(f"x{getattr(gen, 'scale', '?')}")
    return ", ".join(parts)


def _load_init_model(path: Path, source: str) -> SRModel:
    """The model `init_from` names: the file at `path`, else `source` (a bundled name)."""
    try:
        return load_model(path if path.is_file() else source)
    except ModelFileError as exc:
        raise ConfigError(f"init_from: {exc}") from None


def _step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded by (seed, step) alone, so a resumed run draws the same."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + step)


# -- SRGAN family ----------------------------------------------------------------------
class _RecipeBase(ABC):
    """What most recipes share: the shipped network is the weight average when there is
    one, no encoder, any schedule change may resume, nothing extra to record. Each
    recipe names its networks (`modules`)."""

    G: Any  # each recipe's network, typed by the recipe
    G_ema: Any
    cfg: TrainConfig

    def network(self) -> nn.Module:
        net: nn.Module = self.G_ema if self.G_ema is not None else self.G
        return net

    def encoder(self) -> nn.Module | None:
        return None

    def check_resume(self, saved: TrainConfig, step: int, path: Path) -> None:
        return None

    def provenance(self) -> dict[str, str]:
        return {}

    def _grown_parts(self) -> tuple[str, ...]:
        """Parameters a warm start may lack: a coding-conditioned generator's coding MLP
        (it starts at zero: the network computes what the unconditioned one did)."""
        return ("coding_net.",) if getattr(self.cfg.model.generator, "coding", False) else ()

    @abstractmethod
    def modules(self) -> dict[str, nn.Module | None]:
        """Every network whose weights the checkpoint holds, by name."""

    def load_weights(self, path: Path, source: str) -> str:
        """A checkpoint loads every network it holds that this run has (its weight
        average as G when it kept one); a model file loads G (and the encoder, when this
        run has an autoencoder and the file carries one)."""
        modules = self.modules()
        if path.is_file() and is_checkpoint(path):
            tensors, _ = read_safetensors(path)
            if any(k.startswith("G_ema.") for k in tensors):  # the weights that run exported
                tensors = {k: v for k, v in tensors.items() if not k.startswith("G.")}
                tensors |= {"G." + k[6:]: v for k, v in tensors.items() if k.startswith("G_ema.")}
            present = {n for n in modules if any(k.startswith(n + ".") for k in tensors)}
            if "G" not in present:
                raise ConfigError(f"init_from {path}: the checkpoint holds no generator")
            loaded = {
                n: m for n, m in modules.items() if m is not None and n in present and n != "G_ema"
            }
            unpack_modules(tensors, loaded, may_add=self._grown_parts())
            return f"{path.name} ({', '.join(sorted(loaded))})"
        model = _load_init_model(path, source)
        load_grown(self.G, model.generator.state_dict(), self._grown_parts())
        AE = modules.get("AE")
        if AE is not None and model.encoder is not None:
            encoder = AE.get_submodule("encoder")
            encoder.load_state_dict(model.encoder.state_dict(), strict=True)
        return model.name


class SRGANRecipe(_RecipeBase):
    """SPEC section 3's schedule, one global step counter through three phases:
    [0, ae_steps)                         autoencoder on HR patches (skipped if lam_e = 0)
    [ae_steps, ae_steps + warmup_steps)    generator, fidelity term only
    [..., + gan_steps)                    full objective; D and G alternate when lam_a > 0
    """

    name = "srgan_sqe"

    def __init__(self, cfg: TrainConfig, device: torch.device, base: Path | None = None) -> None:
        self.cfg = cfg
        loss = cfg.loss
        torch.manual_seed(cfg.seed)
        channels_last = cfg.channels_last
        self.G = _placed(build_network(cfg.model.generator), device, channels_last)
        self.G_ema = _frozen_copy(self.G) if cfg.ema_decay else None
        self.AE = (
            _placed(build_autoencoder(cfg.autoencoder), device, channels_last)
            if loss.lam_e > 0
            else None
        )
        self.D = (
            _placed(build_discriminator(cfg.discriminator), device, channels_last)
            if loss.lam_a > 0
            else None
        )
        self._device_type = device.type
        self._bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_native(device))
        betas = cfg.betas
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.warmup_lr, betas=betas)
        self.opt_ae = (
            torch.optim.Adam(self.AE.parameters(), lr=1e-3, betas=betas) if self.AE else None
        )
        self.opt_d = (
            torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas) if self.D else None
        )
        self.ae_steps = cfg.ae_steps if self.AE is not None else 0
        self.total = self.ae_steps + cfg.warmup_steps + cfg.gan_steps
        self.init_source: str | None = None
        self._objective: GeneratorObjective | None = None

    def modules(self) -> dict[str, nn.Module | None]:
        return {"G": self.G, "G_ema": self.G_ema, "AE": self.AE, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer | None]:
        return {"G": self.opt_g, "AE": self.opt_ae, "D": self.opt_d}

    def phase(self, step: int) -> str:
        if step < self.ae_steps:
            return "ae"
        if step < self.ae_steps + self.cfg.warmup_steps:
            return "warmup"
        return "gan"

    def validates(self, step: int) -> bool:
        return self.phase(step) != "ae"

    def gan_lr(self, step: int) -> float:
        """Learning rate of the GAN phase at `step` (constant, or linear decay)."""
        cfg = self.cfg
        start = self.ae_steps + cfg.warmup_steps
        return _linear_lr(cfg.lr, cfg.lr_final, step, start, cfg.gan_steps)

    def _fidelity(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        loss = self.cfg.loss
        if loss.fidelity == "l1":
            return l1_loss(sr, hr)
        return quasi_norm_loss(sr, hr, q=loss.q, eps=loss.eps)

    def objective(self) -> GeneratorObjective:
        if self._objective is None:
            encoder = self.AE.encoder if self.AE is not None else None
            if encoder is not None:
                for p in encoder.parameters():
                    p.requires_grad_(False)
                encoder.eval()
            self._objective = GeneratorObjective(self.cfg.loss, encoder=encoder)
        return self._objective

    def _fast(self) -> contextlib.AbstractContextManager[object]:
        """The autocast region of the networks' forward passes (TrainConfig.precision);
        their outputs are cast back to float32 before any loss is computed."""
        return torch.autocast(self._device_type, dtype=torch.bfloat16, enabled=self._bf16)

    def _generate(self, lr_img: torch.Tensor, batch: TrainingBatch) -> torch.Tensor:
        """G(LR), told each patch's coding when G is conditioned on it."""
        if getattr(self.cfg.model.generator, "coding", False):
            return cast(torch.Tensor, self.G(lr_img, coding=batch.coding))
        return cast(torch.Tensor, self.G(lr_img))

    def train_step(self, step: int, batch: TrainingBatch) -> dict[str, float]:
        hr, lr_img = batch.hr, batch.lr
        phase = self.phase(step)
        if phase == "ae":
            assert self.AE is not None and self.opt_ae is not None  # ae_steps > 0 needs AE
            self.AE.train()
            loss = l1_loss(self.AE(hr), hr)
            self.opt_ae.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_ae.step()
            return {"ae": loss.item()}
        self.G.train()
        if phase == "warmup":
            _set_lr(self.opt_g, self.cfg.warmup_lr)
            with self._fast():
                sr = self._generate(lr_img, batch)
            loss = self._fidelity(sr.float(), hr)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
            _update_average(self.G_ema, self.G, self.cfg.ema_decay)
            return {"g": loss.item()}
        lr = self.gan_lr(step)
        _set_lr(self.opt_g, lr)
        if self.opt_d is not None:
            _set_lr(self.opt_d, lr)
        out: dict[str, float] = {}
        with self._fast():
            sr = self._generate(lr_img, batch)
        sr = sr.float()
        fake_logits = None
        if self.D is not None:
            assert self.opt_d is not None  # made with D
            self.D.train()
            with self._fast():
                real_logits, detached_logits = self.D(hr), self.D(sr.detach())
            d_loss = discriminator_loss(real_logits.float(), detached_logits.float())
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            out["d"] = d_loss.item()
            with self._fast():
                fake_logits = self.D(sr)
            fake_logits = fake_logits.float()
        total, terms = self.objective()(sr, hr, fake_logits=fake_logits)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        _update_average(self.G_ema, self.G, self.cfg.ema_decay)
        out["g"] = total.item()
        out.update({k: float(v) for k, v in terms.items()})
        return out

    def encoder(self) -> nn.Module | None:
        return self.AE.encoder if self.AE is not None else None

    def check_resume(self, saved: TrainConfig, step: int, path: Path) -> None:
        if saved.warmup_steps != self.cfg.warmup_steps:
            # A warm-up may be lengthened or shortened while the run is still in it or has
            # just finished it: no GAN step may have been taken under the old schedule.
            if step > self.ae_steps + min(saved.warmup_steps, self.cfg.warmup_steps):
                raise ConfigError(
                    f"checkpoint {path} is at step {step}, past the warm-up of one of the two "
                    "schedules; warmup_steps can change only until the first GAN step"
                )

    @property
    def vgg_content(self) -> str | None:
        """Whether SRGAN's VGG content term is in the objective: None when the loss has
        no VGG weight, else 'on (FILE)' or a plain 'off' with the reason."""
        loss = self.cfg.loss
        if loss.lam_vgg <= 0:
            return None
        if loss.vgg_weights:
            return f"on ({Path(loss.vgg_weights).name})"
        return (
            "off: no VGG19 weights file was given (loss.vgg_weights), so this srgan run "
            "trains without the VGG content loss of the paper"
        )

    def provenance(self) -> dict[str, str]:
        return {"vgg_content": self.vgg_content} if self.vgg_content is not None else {}


# -- SR3 diffusion ---------------------------------------------------------------------
class DiffusionRecipe(_RecipeBase):
    """SR3's training: the denoiser predicts v at a random noise level per patch
    (mean squared error), `TrainConfig.steps` steps at `lr` (linear decay to
    `lr_final`), with an EMA of the weights (`ema_decay`) that the model file ships.
    The noise of step k is drawn from a generator seeded by (seed, k), so a resumed
    run continues exactly."""

    name = "diffusion"

    def __init__(self, cfg: TrainConfig, device: torch.device, base: Path | None = None) -> None:
        if cfg.model.generator.arch != "sr3":
            raise ConfigError(
                f"recipe 'diffusion' trains arch 'sr3', not {cfg.model.generator.arch!r}"
            )
        if cfg.steps is None:
            raise ConfigError("recipe 'diffusion' needs `steps` (its number of training steps)")
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.G = cast(SR3Net, build_network(cfg.model.generator).to(device))
        self.G_ema = _frozen_copy(self.G) if cfg.ema_decay else None
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.total = int(cfg.steps)
        self.init_source: str | None = None

    def modules(self) -> dict[str, nn.Module | None]:
        return {"G": self.G, "G_ema": self.G_ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer | None]:
        return {"G": self.opt_g}

    def phase(self, step: int) -> str:
        return "diffusion"

    def validates(self, step: int) -> bool:
        return True

    def train_step(self, step: int, batch: TrainingBatch) -> dict[str, float]:
        cfg = self.cfg
        _set_lr(self.opt_g, _linear_lr(cfg.lr, cfg.lr_final, step, 0, self.total))
        self.G.train()
        loss = self.G.training_loss(batch.lr, batch.hr, generator=_step_generator(cfg.seed, step))
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        _update_average(self.G_ema, self.G, cfg.ema_decay)
        return {"v_mse": loss.item()}


# -- pseudo-supervised unpaired SR ------------------------------------------------------
def _lsgan(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN term: mean (logit - 1)^2 for `real`, mean logit^2 otherwise."""
    return mse_loss(logits, torch.ones_like(logits) if real else torch.zeros_like(logits))


class UnpairedRecipe(_RecipeBase):
    """Maeda 2020's losses for arch 'unpaired' (SR = U(C(x))), one phase of
    `TrainConfig.steps` steps. Per step, with y the clean HR batch, y_d = D_s(y) its clean
    LR (both from the loop) and x a batch of real LR (`RealLRSampler`, by (seed, step)):

    - C (x -> clean LR) and G_yx (y_d + noise -> real-looking LR) learn from
      adversarial terms on both LR domains (D_clean: C(x) vs y_d; D_real: G_yx(y_d) vs
      x), the one-way cycle |C(G_yx(y_d)) - y_d|, the identity |C(y_d) - y_d| and the
      geometric ensemble |C(x) - mean_T T^-1 C(T x)| (8 flips / rotations);
    - U learns L1 |U(C(G_yx(y_d))) - y| on the pseudo-clean LR, detached: C stays a
      correction of the LR defined by the translation losses alone (the SR loss
      cannot pull its output away from the clean-LR domain towards whatever features
      U prefers, so C also works with a U trained elsewhere), and U learns to cope
      with C's residual errors, as it will meet them on real slides;
    - then both discriminators step. The adversarial terms are least-squares (LSGAN:
      logits pushed to 1 for the domain's own patches, 0 for translated ones), whose
      gradients stay useful when a patch discriminator wins early.

    With `unpaired.train_sr` False only C (and G_yx) train and U stays as loaded.
    The noise of G_yx at step k comes from a generator seeded by (seed, k) and the
    real batch from `default_rng([seed, k, ...])`, so a resumed run continues exactly.
    """

    name = "unpaired"

    def __init__(
        self,
        cfg: TrainConfig,
        device: torch.device,
        base: Path | None = None,
        *,
        real: RealLRSampler | None = None,
    ) -> None:
        arch = cfg.model.generator
        if not isinstance(arch, UnpairedConfig):
            raise ConfigError(
                f"recipe 'unpaired' trains arch 'unpaired' (model.generator.arch), not "
                f"{arch.arch!r}"
            )
        if cfg.unpaired is None:
            raise ConfigError(
                "recipe 'unpaired' needs the real LR it adapts to: add a section "
                '"unpaired": {"real_lr": ["slide.svs", ...]} naming the slides or images '
                "(optionally with regions: x, y, w, h in level-0 px)"
            )
        if cfg.steps is None:
            raise ConfigError("recipe 'unpaired' needs `steps` (its number of training steps)")
        if cfg.degradation.preset != "clean":
            raise ConfigError(
                "recipe 'unpaired' makes its clean LR with D_s: set degradation to 'clean' "
                "(the real LR's degradation is what the correction net learns)"
            )
        self.cfg, self.opts, self.device = cfg, cfg.unpaired, device
        s = arch.scale
        if real is None:
            real = RealLRSampler(
                open_real_lr(self.opts.real_lr, base),
                patch_size=self.opts.real_patch_size or cfg.patch_size // s,
                batch_size=self.opts.real_batch_size or cfg.batch_size,
                seed=cfg.seed,
                augment=cfg.augment,
                max_background=self.opts.max_background,
            )
        self.real = real
        torch.manual_seed(cfg.seed)
        self.G = cast(UnpairedSR, build_network(arch).to(device))
        self.G_yx = DegradationNet(arch.correction_layers, arch.correction_channels).to(device)
        self.D_clean = PatchDiscriminator().to(device)
        self.D_real = PatchDiscriminator().to(device)
        self.G_ema = _frozen_copy(self.G) if cfg.ema_decay else None
        self.train_sr = self.opts.train_sr and self.opts.lam_sr > 0
        if not self.train_sr:
            self.G.sr.requires_grad_(False)
        params = [p for p in self.G.parameters() if p.requires_grad]
        self.opt_g = torch.optim.Adam(
            params + list(self.G_yx.parameters()), lr=cfg.lr, betas=cfg.betas
        )
        self.opt_d = torch.optim.Adam(
            list(self.D_clean.parameters()) + list(self.D_real.parameters()),
            lr=self.opts.d_lr or cfg.lr,
            betas=cfg.betas,
        )
        self.total = int(cfg.steps)
        self.init_source: str | None = None

    def modules(self) -> dict[str, nn.Module | None]:
        return {
            "G": self.G,
            "G_ema": self.G_ema,
            "G_yx": self.G_yx,
            "D_clean": self.D_clean,
            "D_real": self.D_real,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer | None]:
        return {"G": self.opt_g, "D": self.opt_d}

    def phase(self, step: int) -> str:
        return "unpaired"

    def validates(self, step: int) -> bool:
        return True

    def noise(self, step: int, like: torch.Tensor) -> torch.Tensor:
        """G_yx's noise map of step `step` (N, 1, H, W), drawn from (seed, step) alone."""
        n, _, h, w = like.shape
        gen = _step_generator(self.cfg.seed, step)
        return torch.randn(n, 1, h, w, generator=gen).to(like.device)

    def train_step(self, step: int, batch: TrainingBatch) -> dict[str, float]:
        o, cfg = self.opts, self.cfg
        lr = _linear_lr(cfg.lr, cfg.lr_final, step, 0, self.total)
        _set_lr(self.opt_g, lr)
        _set_lr(self.opt_d, _linear_lr(o.d_lr or cfg.lr, cfg.lr_final, step, 0, self.total))
        y, y_d = batch.hr, batch.lr
        x = torch.from_numpy(self.real.batch(step)).to(y_d.device)
        C, U = self.G.correction, self.G.sr
        self.G.train()
        self.G_yx.train()
        if not self.train_sr:
            U.eval()
        discriminators = (self.D_clean, self.D_real)
        for d in discriminators:
            d.requires_grad_(False)

        fake_x = self.G_yx(y_d, self.noise(step, y_d))  # clean -> real-looking
        pseudo = C(fake_x)  # pseudo-clean LR
        cx = C(x)  # the corrected real LR
        out: dict[str, float] = {}
        terms = {
            "cyc": l1_loss(pseudo, y_d),
            "idt": l1_loss(C(y_d), y_d),
            "geo": l1_loss(cx, self_ensemble(C, x)),
        }
        weights = {"cyc": o.lam_cyc, "idt": o.lam_idt, "geo": o.lam_geo}
        if o.lam_adv > 0:
            terms["adv"] = _lsgan(self.D_clean(cx), True) + _lsgan(self.D_real(fake_x), True)
            weights["adv"] = o.lam_adv
        if self.train_sr:
            terms["sr"] = l1_loss(U(pseudo.detach()), y)
            weights["sr"] = o.lam_sr
        total = sum(weights[k] * v for k, v in terms.items())
        assert isinstance(total, torch.Tensor)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        _update_average(self.G_ema, self.G, cfg.ema_decay)
        out["g"] = total.item()
        out.update({k: v.item() for k, v in terms.items()})

        if o.lam_adv > 0:
            for d in discriminators:
                d.requires_grad_(True)
                d.train()
            d_loss = 0.5 * (
                _lsgan(self.D_clean(y_d), True)
                + _lsgan(self.D_clean(cx.detach()), False)
                + _lsgan(self.D_real(x), True)
                + _lsgan(self.D_real(fake_x.detach()), False)
            )
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            out["d"] = d_loss.item()
        return out

    def provenance(self) -> dict[str, str]:
        names = ", ".join(im.name for im in self.real.images)
        return {
            "real_lr": names[:2000],
            "unpaired_sr_trained": "true" if self.train_sr else "false",
        }

    def load_weights(self, path: Path, source: str) -> str:
        """`init_from` for this recipe: an 'unpaired' model or checkpoint loads C and U
        (and, from a checkpoint, G_yx and the discriminators); an SRGAN-family
        generator (lrnet, srresnet: a model file, or the G of an 'srgan_sqe' training
        checkpoint) loads into U, and C starts as the identity."""
        if path.is_file() and is_checkpoint(path):
            tensors, _ = read_safetensors(path)
            prefix = "G_ema." if any(k.startswith("G_ema.") for k in tensors) else "G."
            g = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not g:
                raise ConfigError(f"init_from {path}: the checkpoint holds no generator")
            if not any(k.startswith(("correction.", "sr.")) for k in g):
                self.G.sr.load_state_dict(g, strict=True)
                return f"{path.name} (its generator as the SR net)"
            self.G.load_state_dict(g, strict=True)
            parts = {
                n: m
                for n, m in self.modules().items()
                if n in ("G_yx", "D_clean", "D_real")
                and m is not None
                and any(k.startswith(n + ".") for k in tensors)
            }
            unpack_modules(tensors, parts)
            return f"{path.name} ({', '.join(['G', *sorted(parts)])})"
        model = _load_init_model(path, source)
        if isinstance(model.config.generator, UnpairedConfig):
            self.G.load_state_dict(model.generator.state_dict(), strict=True)
            return model.name
        if isinstance(model.config.generator, GeneratorConfig):
            self.G.sr.load_state_dict(model.generator.state_dict(), strict=True)
            return f"{model.name} (as the SR net)"
        raise ConfigError(
            f"init_from {source}: its network is {model.arch!r}; the unpaired "
            "recipe starts its SR net from an lrnet or srresnet generator, or "
            "from an 'unpaired' model"
        )


RECIPES: dict[str, type] = {
    "srgan_sqe": SRGANRecipe,
    "diffusion": DiffusionRecipe,
    "unpaired": UnpairedRecipe,
}
"""Recipe name -> class (`TrainConfig.recipe`)."""
