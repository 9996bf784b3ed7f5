"""The training loop every method trains in: `Trainer`.

The loop owns the data, validation, the log (`log.jsonl`), the event stream
(`StepEvent`), checkpoints and resume; the method-specific step is a recipe
(`training.recipes`: SRGAN_SQE's three phases, SR3's diffusion loss). Batches depend
only on (seed, step), and checkpoints hold every weight and optimizer moment of the
recipe, so `resume` continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_srgan_sqe.config import ConfigError, TrainConfig, saved_train_config
from napari_srgan_sqe.degradation import degrade, degrade_torch
from napari_srgan_sqe.io.atomic import atomic_path
from napari_srgan_sqe.io.checkpoints import read_safetensors, write_safetensors
from napari_srgan_sqe.metrics import psnr, qilv, ssim
from napari_srgan_sqe.models.modelfile import SRModel, save_model
from napari_srgan_sqe.models.predictor import Predictor, resolve_device
from napari_srgan_sqe.training.data import (
    BatchPrefetcher,
    PatchSampler,
    load_rgb,
    resolve_path,
    resolve_split,
)
from napari_srgan_sqe.training.recipes import Recipe, TrainingBatch, make_recipe
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
        self.out_dir = resolve_path(base, cfg.out_dir)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device)
        train_paths, val_paths = resolve_split(
            [resolve_path(base, d) for d in cfg.data],
            resolve_path(base, cfg.split_file) if cfg.split_file else None,
            [resolve_path(base, d) for d in cfg.val_data],
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
            stain_jitter=cfg.stain_jitter,
            coding_hidden=cfg.coding_hidden,
        )
        self.val_images = [
            _centre_crop(load_rgb(p), cfg.val_crop, cfg.model.scale) for p in self.val_paths
        ]
        self.val_lr = [validation_lr(hr, cfg) for hr in self.val_images]

        self.recipe: Recipe = make_recipe(cfg, self.device, base)
        self.total = self.recipe.total
        self.step = 0
        self._prefetch: BatchPrefetcher | None = None

    @property
    def init_source(self) -> str | None:
        return self.recipe.init_source

    @property
    def vgg_content(self) -> str | None:
        """SRGAN's VGG content term: None when the recipe has none, else 'on (FILE)' or a
        plain 'off' with the reason."""
        return getattr(self.recipe, "vgg_content", None)

    def phase(self, step: int) -> str:
        return self.recipe.phase(step)

    def batch(self, step: int) -> TrainingBatch:
        """The batch of global step `step` on the device: HR and its LR."""
        batch = None
        if self._prefetch is not None:
            try:
                batch = self._prefetch.batch(step)
            except BrokenProcessPool as exc:  # a worker killed (SIGTERM to the group, OOM)
                log.warning("the data workers stopped (%s); batches are made here now", exc)
                self._prefetch.close()
                self._prefetch = None
        if batch is None:  # the same batch the workers would have made
            batch = self.sampler.batch(step)
        hr = torch.from_numpy(batch.hr).to(self.device)
        if batch.lr is not None:  # made by the sampler (scanner preset)
            lr = torch.from_numpy(batch.lr).to(self.device)
        else:
            lr = degrade_torch(
                torch.from_numpy(batch.lr_source).to(self.device),
                self.cfg.model.scale,
                quantize=self.cfg.quantize_lr,
            )
        if self.cfg.channels_last:
            hr = hr.contiguous(memory_format=torch.channels_last)
            lr = lr.contiguous(memory_format=torch.channels_last)
        coding = None if batch.coding is None else torch.from_numpy(batch.coding).to(self.device)
        return TrainingBatch(hr=hr, lr=lr, coding=coding)

    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step of the recipe on the batch of `step`."""
        return self.recipe.train_step(step, self.batch(step))

    # -- validation ----------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Mean PSNR / SSIM / QILV of SR vs HR on the fixed validation crops."""
        if not self.val_images:
            return {}
        # A copy: the Predictor may change the weights' memory layout (channels_last),
        # which would make the continuing run differ from a resumed one.
        model = copy.deepcopy(self.as_model(with_encoder=False))
        pred = Predictor(
            model, device=str(self.device), precision="fp32", coding=validation_coding(self.cfg)
        )
        rows = []
        for hr, lr in zip(self.val_images, self.val_lr, strict=True):
            sr = pred.predict_image(lr)
            rows.append((psnr(sr, hr), ssim(sr, hr), qilv(sr, hr)))
        m = np.mean(rows, axis=0)
        return {"val_psnr": float(m[0]), "val_ssim": float(m[1]), "val_qilv": float(m[2])}

    def as_model(self, *, with_encoder: bool = True, **metadata: str) -> SRModel:
        """The recipe's network (and, at the end, its frozen encoder) as a model, in eval
        mode."""
        encoder = self.recipe.encoder() if with_encoder else None
        config = self.cfg.model.model_copy(
            update={"autoencoder": self.cfg.autoencoder if encoder else None}
        )
        model = SRModel(self.recipe.network(), config=config, encoder=encoder, metadata=metadata)
        return model.eval()

    # -- checkpoints -----------------------------------------------------------
    def save_checkpoint(self) -> Path:
        tensors = pack_modules(self.recipe.modules())
        tensors |= pack_optimizers(self.recipe.optimizers())
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
        self.recipe.check_resume(saved, step, path)
        unpack_modules(tensors, self.recipe.modules())
        unpack_optimizers(tensors, self.recipe.optimizers())
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
            # a run killed while writing left its temporary files (io.atomic names them)
            for name in (CHECKPOINT, MODEL):
                final = Path(name)
                for tmp in self.out_dir.glob(f".{final.stem}.*.tmp{final.suffix}"):
                    tmp.unlink(missing_ok=True)
                    log.info("removed %s, left by a run stopped while writing", tmp.name)
            if (self.out_dir / CHECKPOINT).exists():
                self.load_checkpoint()
                log.info("resumed at step %d of %d", self.step, self.total)
            # a run killed between two checkpoints logged steps it now takes again
            trim_log(self.out_dir / LOG, self.step)
        end = self.total if max_steps is None else min(self.total, self.step + max_steps)
        t0 = time.perf_counter()
        logf = (self.out_dir / LOG).open("a")
        try:
            if self.cfg.data_workers and self.step < end:
                self._prefetch = BatchPrefetcher(self.sampler, self.cfg.data_workers)
            while self.step < end:
                if stop_event is not None and stop_event.is_set():
                    break
                losses = self.train_step(self.step)
                self.step += 1
                val = None
                at_val = self.step % self.cfg.val_every == 0 or self.step == self.total
                if at_val and self.recipe.validates(self.step - 1):
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
            if self._prefetch is not None:
                self._prefetch.close()
                self._prefetch = None
        self.save_checkpoint()
        provenance = {"initialised_from": self.init_source} if self.init_source else {}
        provenance |= self.recipe.provenance()
        model = self.as_model(
            with_encoder=True,  # explicit: keeps **provenance (str values) off this flag
            training_data=", ".join(p.name for p in self.train_paths)[:4000],
            steps=str(self.step),
            degradation=self.cfg.degradation.preset,
            recipe=self.recipe.name,
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
        "steps",
        "lr_final",
        "checkpoint_every",
        "val_every",
        "out_dir",
        "num_threads",
        "data_workers",
        "device",
    ):
        d.pop(k, None)
    return d


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


def validation_coding(cfg: TrainConfig) -> tuple[str, int | None]:
    """How the validation LR of `validation_lr` is stored, as a conditioned model is told."""
    if cfg.degradation.preset == "scanner":
        return ("jpeg", VAL_JPEG_QUALITY)
    return ("none", None)


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
