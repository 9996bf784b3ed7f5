"""The SRGAN_SQE training loop: autoencoder pre-training, fidelity warm-up, GAN phase.

One global step counter runs through the three phases (SPEC section 3):
  [0, ae_steps)                         autoencoder on HR patches (skipped if lam_e = 0)
  [ae_steps, ae_steps + warmup_steps)    generator, fidelity term only
  [..., + gan_steps)                    full objective; D and G alternate when lam_a > 0
Batches depend only on (seed, step), and checkpoints hold every weight and optimizer
moment, so `resume` continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_srgan_sqe.config import ConfigError, TrainConfig, saved_train_config
from napari_srgan_sqe.degradation import degrade, degrade_torch
from napari_srgan_sqe.io.atomic import atomic_path
from napari_srgan_sqe.io.checkpoints import (
    CheckpointError,
    read_safetensors,
    read_safetensors_metadata,
    write_safetensors,
)
from napari_srgan_sqe.losses import GeneratorObjective, discriminator_loss, l1_loss, quasi_norm_loss
from napari_srgan_sqe.metrics import psnr, qilv, ssim
from napari_srgan_sqe.models.architectures import build_network
from napari_srgan_sqe.models.autoencoder import build_autoencoder
from napari_srgan_sqe.models.discriminator import build_discriminator
from napari_srgan_sqe.models.modelfile import ModelFileError, SRModel, load_model, save_model
from napari_srgan_sqe.models.predictor import Predictor, resolve_device
from napari_srgan_sqe.training.data import PatchSampler, load_rgb, resolve_split
from napari_srgan_sqe.training.state import (
    pack_modules,
    pack_optimizers,
    unpack_modules,
    unpack_optimizers,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
LOG = "log.jsonl"


@dataclass
class StepEvent:
    """What the loop reports after each step (for progress bars and GUIs)."""

    step: int
    total: int
    phase: str
    losses: dict[str, float]
    val: dict[str, float] | None = None
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Train one model from a validated `TrainConfig`."""

    def __init__(self, cfg: TrainConfig, *, base_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        self.out_dir = _resolve(base, cfg.out_dir)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device)
        train_paths, val_paths = resolve_split(
            [_resolve(base, d) for d in cfg.data],
            _resolve(base, cfg.split_file) if cfg.split_file else None,
            [_resolve(base, d) for d in cfg.val_data],
        )
        self.train_paths, self.val_paths = train_paths, val_paths[: cfg.val_images]
        self.sampler = PatchSampler(
            [load_rgb(p) for p in train_paths],
            patch_size=cfg.patch_size,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            augment=cfg.augment,
            corruption=cfg.corruption,
            degradation=cfg.degradation,
            scale=cfg.model.scale,
            lower_mag_fraction=cfg.lower_mag_fraction,
        )
        self.val_images = [
            _centre_crop(load_rgb(p), cfg.val_crop, cfg.model.scale) for p in self.val_paths
        ]
        self.val_lr = [validation_lr(hr, cfg) for hr in self.val_images]

        torch.manual_seed(cfg.seed)
        loss = cfg.loss
        self.G = build_network(cfg.model.generator).to(self.device)
        self.G_ema = _frozen_copy(self.G) if cfg.ema_decay else None
        self.AE = build_autoencoder(cfg.autoencoder).to(self.device) if loss.lam_e > 0 else None
        self.D = build_discriminator(cfg.discriminator).to(self.device) if loss.lam_a > 0 else None
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
        self.step = 0
        self._objective: GeneratorObjective | None = None
        self.init_source: str | None = None
        if cfg.init_from:
            self._warm_start(cfg.init_from, base)

    def _warm_start(self, source: str, base: Path) -> None:
        """Load weights from a training checkpoint or a model (`TrainConfig.init_from`)."""
        path = _resolve(base, source)
        try:
            if path.is_file() and _is_checkpoint(path):
                self.init_source = self._load_checkpoint_weights(path)
            else:
                self.init_source = self._load_model_weights(path if path.is_file() else source)
        except RuntimeError as exc:  # load_state_dict: names or shapes differ
            raise ConfigError(
                f"init_from {source}: its weights do not fit this run's architecture: "
                f"{_first_mismatch(exc)}"
            ) from None
        if self.G_ema is not None:  # the average starts from the loaded weights
            self.G_ema.load_state_dict(self.G.state_dict())
        log.info("warm start from %s", self.init_source)

    def _load_checkpoint_weights(self, path: Path) -> str:
        """G, AE and D from a training checkpoint, where this run has them."""
        tensors, _ = read_safetensors(path)
        if any(k.startswith("G_ema.") for k in tensors):  # the weights that run exported
            tensors = {k: v for k, v in tensors.items() if not k.startswith("G.")}
            tensors |= {"G." + k[6:]: v for k, v in tensors.items() if k.startswith("G_ema.")}
        modules = {"G": self.G, "AE": self.AE, "D": self.D}
        present = {n for n in modules if any(k.startswith(n + ".") for k in tensors)}
        if "G" not in present:
            raise ConfigError(f"init_from {path}: the checkpoint holds no generator")
        loaded = {n: m for n, m in modules.items() if m is not None and n in present}
        unpack_modules(tensors, loaded)
        return f"{path.name} ({', '.join(sorted(loaded))})"

    def _load_model_weights(self, source: str | Path) -> str:
        """The generator (and the encoder, when the file carries one) of a model."""
        try:
            model = load_model(source)
        except ModelFileError as exc:
            raise ConfigError(f"init_from: {exc}") from None
        self.G.load_state_dict(model.generator.state_dict(), strict=True)
        if self.AE is not None and model.encoder is not None:
            self.AE.encoder.load_state_dict(model.encoder.state_dict(), strict=True)
        return model.name

    # -- phases --------------------------------------------------------------
    def phase(self, step: int) -> str:
        if step < self.ae_steps:
            return "ae"
        if step < self.ae_steps + self.cfg.warmup_steps:
            return "warmup"
        return "gan"

    def gan_lr(self, step: int) -> float:
        """Learning rate of the GAN phase at `step` (constant, or linear decay)."""
        cfg = self.cfg
        if cfg.lr_final is None or cfg.gan_steps <= 1:
            return cfg.lr
        start = self.ae_steps + cfg.warmup_steps
        t = min(max((step - start) / (cfg.gan_steps - 1), 0.0), 1.0)
        return cfg.lr + t * (cfg.lr_final - cfg.lr)

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

    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step of whichever phase `step` falls in."""
        batch = self.sampler.batch(step)
        hr = torch.from_numpy(batch.hr).to(self.device)
        phase = self.phase(step)
        if phase == "ae":
            assert self.AE is not None and self.opt_ae is not None  # ae_steps > 0 needs AE
            self.AE.train()
            recon = self.AE(hr)
            loss = l1_loss(recon, hr)
            self.opt_ae.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_ae.step()
            return {"ae": loss.item()}
        if batch.lr is not None:  # made by the sampler (scanner preset)
            lr_img = torch.from_numpy(batch.lr).to(self.device)
        else:
            lr_img = degrade_torch(
                torch.from_numpy(batch.lr_source).to(self.device),
                self.cfg.model.scale,
                quantize=self.cfg.quantize_lr,
            )
        self.G.train()
        if phase == "warmup":
            _set_lr(self.opt_g, self.cfg.warmup_lr)
            sr = self.G(lr_img)
            loss = self._fidelity(sr, hr)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
            self._update_ema()
            return {"g": loss.item()}
        lr = self.gan_lr(step)
        _set_lr(self.opt_g, lr)
        if self.opt_d is not None:
            _set_lr(self.opt_d, lr)
        out: dict[str, float] = {}
        sr = self.G(lr_img)
        fake_logits = None
        if self.D is not None:
            assert self.opt_d is not None  # made with D
            self.D.train()
            d_loss = discriminator_loss(self.D(hr), self.D(sr.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            out["d"] = d_loss.item()
            fake_logits = self.D(sr)
        total, terms = self.objective()(sr, hr, fake_logits=fake_logits)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        self._update_ema()
        out["g"] = total.item()
        out.update({k: float(v) for k, v in terms.items()})
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.G_ema is None:
            return
        assert self.cfg.ema_decay is not None  # G_ema exists only with a decay
        w = 1.0 - float(self.cfg.ema_decay)
        for avg, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            avg.lerp_(p.detach(), w)
        for avg_b, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            avg_b.copy_(b)

    # -- validation ----------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Mean PSNR / SSIM / QILV of SR vs HR on the fixed validation crops."""
        if not self.val_images:
            return {}
        # A copy: the Predictor may change the weights' memory layout (channels_last),
        # which would make the continuing run differ from a resumed one.
        model = copy.deepcopy(self.as_model(with_encoder=False))
        pred = Predictor(model, device=str(self.device), precision="fp32")
        rows = []
        for hr, lr in zip(self.val_images, self.val_lr, strict=True):
            sr = pred.predict_image(lr)
            rows.append((psnr(sr, hr), ssim(sr, hr), qilv(sr, hr)))
        self.G.train()
        m = np.mean(rows, axis=0)
        return {"val_psnr": float(m[0]), "val_ssim": float(m[1]), "val_qilv": float(m[2])}

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

    def as_model(self, *, with_encoder: bool = True, **metadata: str) -> SRModel:
        """The generator (and, at the end, the frozen encoder) as a model, in eval mode."""
        encoder = self.AE.encoder if self.AE is not None and with_encoder else None
        config = self.cfg.model.model_copy(
            update={"autoencoder": self.cfg.autoencoder if encoder else None}
        )
        generator = self.G_ema if self.G_ema is not None else self.G
        model = SRModel(generator, config=config, encoder=encoder, metadata=metadata)
        return model.eval()

    # -- checkpoints -----------------------------------------------------------
    def save_checkpoint(self) -> Path:
        tensors = pack_modules({"G": self.G, "G_ema": self.G_ema, "AE": self.AE, "D": self.D})
        tensors |= pack_optimizers({"G": self.opt_g, "AE": self.opt_ae, "D": self.opt_d})
        meta = {
            "step": str(self.step),
            "config": self.cfg.model_dump_json(),
            "kind": "training-checkpoint",
        }
        path = self.out_dir / CHECKPOINT
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_safetensors(path, tensors, meta)
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> int:
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT
        tensors, meta = read_safetensors(path)
        saved = saved_train_config(meta["config"], source=str(path))
        was, now = _schedule_free(saved), _schedule_free(self.cfg)
        if was != now:
            differ = ", ".join(k for k in now if was.get(k) != now[k])
            raise ConfigError(
                f"checkpoint {path} was written with a different configuration ({differ}); "
                "cannot resume (only the schedule's lengths, lr_final and logging intervals "
                "may change)"
            )
        step = int(meta["step"])
        if saved.warmup_steps != self.cfg.warmup_steps:
            # A warm-up may be lengthened or shortened while the run is still in it or has
            # just finished it: no GAN step may have been taken under the old schedule.
            ae = self.ae_steps
            if step > ae + min(saved.warmup_steps, self.cfg.warmup_steps):
                raise ConfigError(
                    f"checkpoint {path} is at step {step}, past the warm-up of one of the two "
                    "schedules; warmup_steps can change only until the first GAN step"
                )
        unpack_modules(tensors, {"G": self.G, "G_ema": self.G_ema, "AE": self.AE, "D": self.D})
        unpack_optimizers(tensors, {"G": self.opt_g, "AE": self.opt_ae, "D": self.opt_d})
        self.step = step
        return self.step

    # -- the loop ------------------------------------------------------------
    def run(
        self,
        *,
        resume: bool = False,
        stop_event: threading.Event | None = None,
        callback: Callable[[StepEvent], None] | None = None,
        max_steps: int | None = None,
    ) -> SRModel:
        """Train to the end of the schedule (or `max_steps` more steps); return the model.

        Checkpoints every `checkpoint_every` steps, at the end, on stop and on Ctrl-C.
        On `resume` the log keeps only the records up to the checkpoint's step.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if (self.out_dir / CHECKPOINT).exists():
                self.load_checkpoint()
                log.info("resumed at step %d of %d", self.step, self.total)
            # a run killed between two checkpoints logged steps it now takes again
            trim_log(self.out_dir / LOG, self.step)
        end = self.total if max_steps is None else min(self.total, self.step + max_steps)
        t0 = time.perf_counter()
        logf = (self.out_dir / LOG).open("a")
        try:
            while self.step < end:
                if stop_event is not None and stop_event.is_set():
                    break
                losses = self.train_step(self.step)
                self.step += 1
                val = None
                at_val = self.step % self.cfg.val_every == 0 or self.step == self.total
                if at_val and self.phase(self.step - 1) != "ae":
                    val = self.validate()
                phase = self.phase(self.step - 1)
                record = {
                    "step": self.step,
                    "phase": phase,
                    **losses,
                    **(val or {}),
                }
                if self.step % 10 == 0 or val:
                    logf.write(json.dumps(record) + "\n")
                    logf.flush()
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if callback is not None:
                    callback(
                        StepEvent(
                            self.step,
                            self.total,
                            phase,
                            losses,
                            val,
                            time.perf_counter() - t0,
                        )
                    )
        except KeyboardInterrupt:
            self.save_checkpoint()
            raise
        finally:
            logf.close()
        self.save_checkpoint()
        provenance = {"initialised_from": self.init_source} if self.init_source else {}
        if self.vgg_content is not None:
            provenance["vgg_content"] = self.vgg_content
        model = self.as_model(
            with_encoder=True,  # explicit: keeps **provenance (str values) off this flag
            training_data=", ".join(p.name for p in self.train_paths)[:4000],
            steps=str(self.step),
            degradation=self.cfg.degradation.preset,
            **provenance,
        )
        if self.step >= self.total:
            save_model(model, self.out_dir / MODEL)
        return model


def _schedule_free(cfg: TrainConfig) -> dict:
    """The parts of a config that must match for a resume (the schedule's lengths may change)."""
    d = cfg.model_dump()
    for k in (
        "gan_steps",
        "warmup_steps",
        "lr_final",
        "checkpoint_every",
        "val_every",
        "out_dir",
        "num_threads",
        "device",
    ):
        d.pop(k, None)
    return d


def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin.eval()


def _first_mismatch(exc: RuntimeError) -> str:
    """The first concrete line of a `load_state_dict` error (which layer does not fit)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "shape mismatch")
    return detail if len(detail) <= 300 else detail[:297] + "..."


def _is_checkpoint(path: Path) -> bool:
    try:
        meta = read_safetensors_metadata(path)
    except CheckpointError:  # not a safetensors file: load_model explains what it is
        return False
    return meta.get("kind") == "training-checkpoint"


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def trim_log(path: Path, step: int) -> int:
    """Drop the records of the log `path` after `step` (and unreadable lines, such as
    one cut short by a kill), rewriting it atomically; returns how many were dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = int(json.loads(line)["step"]) <= step
        except (ValueError, TypeError, KeyError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        with atomic_path(path) as tmp:
            Path(tmp).write_text("".join(kept))
    return dropped


VAL_JPEG_QUALITY = 75


def validation_lr(hr: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The fixed LR a run validates on: D_s of the HR crop, and for a run trained on the
    scanner preset, D_s then JPEG at quality VAL_JPEG_QUALITY (YCbCr 4:2:0)."""
    from napari_srgan_sqe.io.codecs import code_image

    lr = degrade(hr, cfg.model.scale)
    if cfg.degradation.preset == "scanner":
        lr = code_image(lr, "jpeg", VAL_JPEG_QUALITY)
    return lr


def _centre_crop(img: np.ndarray, size: int, scale: int) -> np.ndarray:
    size = min(size, img.shape[0], img.shape[1])
    size -= size % scale
    y, x = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return np.ascontiguousarray(img[y : y + size, x : x + size])


def train(
    cfg: TrainConfig, *, base_dir: str | Path | None = None, resume: bool = False, **kwargs: Any
) -> SRModel:
    """Train a model from a config (Python entry point of `srgan-sqe train`)."""
    return Trainer(cfg, base_dir=base_dir).run(resume=resume, **kwargs)
