"""Model files: `SRModel`, `save_model`, `load_model`, `new_model`.

A model file is one `.safetensors` file: the generator's tensors under `generator.*`
(and the frozen encoder's under `encoder.*` when it travels with the model, so a
fine-tune can use the manifold loss), plus string metadata holding the full
`ModelConfig` as JSON and a format version. `load_model` rebuilds the exact network
from the file alone and never unpickles unless the user passes `allow_pickle=True`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from napari_srgan_sqe.config import (
    ConfigError,
    GeneratorConfig,
    ModelConfig,
    ZSSRConfig,
    validate,
)
from napari_srgan_sqe.errors import UserFacingError
from napari_srgan_sqe.io.checkpoints import (
    CheckpointError,
    is_pickle,
    load_pickle_state_dict,
    read_safetensors,
    read_safetensors_metadata,
    write_safetensors,
)
from napari_srgan_sqe.models.architectures import build_network, describe
from napari_srgan_sqe.models.autoencoder import build_autoencoder
from napari_srgan_sqe.models.blocks import Bicubic
from napari_srgan_sqe.models.device import resolve_device
from napari_srgan_sqe.models.method import MethodDescriptor, Origins, SRNetwork
from napari_srgan_sqe.models.registry import BUNDLED_MODELS

__all__ = [
    "with_sampling_steps",
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "SRModel",
    "arch_summary",
    "load_model",
    "new_model",
    "reads_coding",
    "save_model",
]

FORMAT = "napari-srgan-sqe"
FORMAT_VERSION = 1


class ModelFileError(UserFacingError, ValueError):
    """A model cannot be loaded: missing, not safetensors, damaged, or the wrong kind."""


class SRModel(nn.Module):
    """A super-resolution model: network + config (+ frozen encoder) + metadata.

    Implements `models.method.SRMethod`: `infer_batch(x, seed=)` is inference (one pass,
    a self-ensemble or sampling steps, as the architecture defines), `descriptor` says
    what inference needs (scale, halo, tiling, kind), `parameter_groups()` the
    trainable groups. `forward(x)` is the plain differentiable network for training:
    float NCHW RGB in [0, 1] -> NCHW at `scale` x the size, not clamped.
    """

    def __init__(
        self,
        generator: nn.Module,
        config: ModelConfig,
        *,
        encoder: nn.Module | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.encoder = encoder
        if encoder is not None:
            encoder.requires_grad_(False).eval()
        self.config = config
        self.metadata: dict[str, str] = dict(metadata or {})
        self._descriptor: MethodDescriptor | None = None

    @property
    def _net(self) -> SRNetwork:
        """The generator as the SRNetwork it is (`build_network` types it as nn.Module)."""
        return cast(SRNetwork, self.generator)

    @property
    def descriptor(self) -> MethodDescriptor:
        """What inference needs to know (computed once; the architecture is fixed)."""
        if self._descriptor is None:
            self._descriptor = describe(self.config.generator.arch, self.generator)
        return self._descriptor

    @property
    def arch(self) -> str:
        """The architecture name ('bicubic' for the weight-free baseline), from the config:
        no need to build the descriptor, which runs the network once to count its work."""
        return "bicubic" if self.variant == "bicubic" else self.config.generator.arch

    def infer_batch(
        self, x: torch.Tensor, *, seed: int | None = None, origins: Origins = None
    ) -> torch.Tensor:
        """Inference on float NCHW [0, 1] -> NCHW at `scale` x the size, unclamped;
        `origins`: each window's LR position in the slide (see `models.method`)."""
        return self._net.infer_batch(x, seed=seed, origins=origins)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The network's trainable groups ('all', 'last'); the encoder is never trained."""
        groups: dict[str, list[nn.Parameter]] = self._net.parameter_groups()
        return groups

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def scale(self) -> int:
        return int(self._net.scale)

    @property
    def halo(self) -> int:
        return int(self._net.halo)

    @property
    def variant(self) -> str:
        return self.config.variant

    @property
    def identity(self) -> str:
        """A short stable hash of the config and the generator weights (a cache key)."""
        h = hashlib.sha256(self.config.model_dump_json().encode())
        for key, t in sorted(self.generator.state_dict().items()):
            h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def train(self, mode: bool = True) -> SRModel:
        super().train(mode)
        if self.encoder is not None:  # the encoder stays frozen
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)


def new_model(config: ModelConfig) -> SRModel:
    """A randomly initialised model for `config` (seed torch before calling)."""
    if config.variant == "bicubic":
        return SRModel(Bicubic(config.scale), config)
    generator = build_network(config.generator)
    encoder = build_autoencoder(config.autoencoder).encoder if config.autoencoder else None
    return SRModel(generator, config, encoder=encoder)


def with_sampling_steps(
    model: SRModel, steps: int | None = None, *, temperature: float | None = None
) -> SRModel:
    """The same stochastic model sampling in `steps` steps and/or at `temperature` (a
    new model with the same weights; its config, identity and cache keys say so)."""
    desc = model.descriptor
    if not desc.stochastic:
        raise ValueError(f"model {model.name!r} is deterministic: it has no sampling steps")
    update: dict[str, float | int] = {}
    if steps is not None:
        update["steps"] = int(steps)
    if temperature is not None:
        update["temperature"] = float(temperature)
    gen_cfg = model.config.generator.model_copy(update=update)
    config = model.config.model_copy(update={"generator": gen_cfg})
    network = build_network(gen_cfg).to(next(model.generator.parameters()).device)
    network.load_state_dict(model.generator.state_dict())
    return SRModel(network, config, encoder=model.encoder, metadata=model.metadata).eval()


def lineage(parent: SRModel) -> dict[str, str]:
    """Metadata a model derived from `parent` (fine-tuned, adapted) carries: the
    parent's name and identity, and `inherited_training_data`, what the parent and its
    own ancestors trained on (so that `evaluate` can tell images none of them saw)."""
    own = str(parent.metadata.get("training_data", "")).strip()
    older = str(parent.metadata.get("inherited_training_data", "")).strip()
    inherited = ", ".join(t for t in (own, older) if t)
    return {
        "parent": parent.name,
        "parent_identity": parent.identity,
        "inherited_training_data": inherited[:8000],
    }


def save_model(
    model: SRModel, path: str | os.PathLike[str], *, metadata: dict[str, str] | None = None
) -> Path:
    """Write `model` to a `.safetensors` file atomically; returns the path.

    `metadata` adds string entries (e.g. `training_data`, `parent`); the format keys
    and the config are always written by this function.
    """
    tensors = {f"generator.{k}": v for k, v in model.generator.state_dict().items()}
    if model.encoder is not None:
        tensors.update({f"encoder.{k}": v for k, v in model.encoder.state_dict().items()})
    meta = {"training_data": "", "parent": ""}
    meta.update(model.metadata)
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    meta.update(
        {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "config": model.config.model_dump_json(),
            "name": model.name,
            "scale": str(model.scale),
            "variant": model.variant,
            "halo": str(model.halo),
            "arch": model.arch,
            "kind": model.descriptor.kind,
            "method": json.dumps(model.descriptor.as_dict()),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
    )
    return write_safetensors(path, tensors, meta)


def _weight_free_model(arch: str, scale: int, name: str) -> SRModel:
    """A bundled model without a weights file: bicubic, or a fresh zero-shot network."""
    if arch == "zssr":
        cfg = ModelConfig(name=name, variant="l1", generator=ZSSRConfig(scale=scale))
        model = new_model(cfg)
        model.metadata["training_data"] = "none yet: trained on the slide it enhances"
        return model
    cfg = ModelConfig(name=name, variant="bicubic", generator=GeneratorConfig(scale=scale))
    return SRModel(Bicubic(scale), cfg, metadata={"training_data": "none (interpolation)"})


def _resolve(name_or_path: str | os.PathLike[str]) -> Path | SRModel:
    """A bundled model's file (or the weight-free model itself), or a user path."""
    if isinstance(name_or_path, str) and name_or_path in BUNDLED_MODELS:
        entry = BUNDLED_MODELS[name_or_path]
        if entry.path is None:
            return _weight_free_model(entry.arch, entry.scale, entry.name)
        if not entry.path.is_file():
            raise ModelFileError(
                f"the bundled model {entry.name!r} has no weights file at {entry.path}; it is "
                "produced by training (srgan-sqe train) - reinstall the package, or pass the "
                "path of a .safetensors model file"
            )
        return entry.path
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(BUNDLED_MODELS)
        if isinstance(name_or_path, str) and os.sep not in name_or_path and not path.suffix:
            raise ModelFileError(
                f"unknown model {name_or_path!r}: bundled models are {known}; "
                "or give the path of a .safetensors file"
            )
        raise ModelFileError(f"model file {path} does not exist (bundled models: {known})")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a .safetensors model file")
    return path


def reads_coding(model: Any) -> bool:
    """Whether a model (an SRModel, a bundled name or a model file) is conditioned on
    its input's coding; for a name or file, from the file's metadata only (no weights
    read). A model that cannot be read counts as not conditioned (loading it says why)."""
    if isinstance(model, SRModel):
        return bool(getattr(model.config.generator, "coding", False))
    try:
        found = _resolve(model)
        if isinstance(found, SRModel):
            return False
        meta = read_safetensors_metadata(found)
        return bool(json.loads(meta.get("config", "{}")).get("generator", {}).get("coding"))
    except (ModelFileError, CheckpointError, OSError, ValueError, AttributeError):
        return False


def _config_from(path: Path, meta: dict[str, str]) -> ModelConfig:
    fmt = meta.get("format")
    if fmt != FORMAT and meta.get("kind") == "training-checkpoint":
        raise ModelFileError(
            f"{path} is a training checkpoint (step {meta.get('step', '?')}), not a model: "
            "`srgan-sqe train --config ... --resume` continues its run, which writes "
            "model.safetensors when it ends; `--init-from` starts a new run from it"
        )
    if fmt != FORMAT:
        raise ModelFileError(
            f"{path} is a safetensors file but not a {FORMAT} model "
            f"(metadata 'format' is {fmt!r}); its config is unknown"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ModelFileError(f"{path}: garbled metadata 'format_version'") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was made by a newer napari-srgan-sqe (model format {version}, this "
            f"version reads up to {FORMAT_VERSION}); upgrade napari-srgan-sqe"
        )
    if "config" not in meta:
        raise ModelFileError(f"{path}: metadata has no 'config'; cannot rebuild the network")
    try:
        data = json.loads(meta["config"])
        return validate(ModelConfig, data, source=f"{path} metadata")
    except (ValueError, ConfigError) as exc:
        raise ModelFileError(f"{path}: garbled 'config' metadata: {exc}") from None


def _check_fit(path: Path, model: SRModel, tensors: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: file {got[k]} vs {expected[k]}"
        for k in expected
        if k in got and got[k] != expected[k]
    ]
    if missing or unexpected or shapes:
        arch = "bicubic" if model.variant == "bicubic" else arch_summary(model.config.generator)
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", shapes),
        ):
            if items:
                more = f" and {len(items) - 5} more" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise ModelFileError(f"{path}: weights do not fit architecture {arch}: " + "; ".join(parts))


def arch_summary(cfg: Any) -> str:
    """'lrnet (12 blocks x 48 ch, x4)', 'zssr (8 layers x 64 ch, x4)', ...: the
    architecture config's own `summary()`."""
    return str(cfg.summary())


def _check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """ModelFileError naming the first tensor holding NaN or infinite values: such a
    model would turn every tile black (NaN -> 0 when rounded to uint8)."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise ModelFileError(
                f"{path}: tensor {key!r} holds {n_bad} NaN or infinite value(s) of "
                f"{t.numel()}: the model is damaged or its training diverged; use another "
                "model file"
            )


def load_model(
    name_or_path: str | os.PathLike[str], *, allow_pickle: bool = False, device: Any = "cpu"
) -> SRModel:
    """Load a bundled model by name or a `.safetensors` model file, in eval mode.

    Pickled PyTorch checkpoints are refused unless `allow_pickle=True`; then they are
    read with `torch.load(weights_only=True)` and need the config as JSON beside them
    (same name, `.json`). `device` is "cpu", "cuda[:i]", "mps" or "auto". Weights
    holding NaN or infinite values are refused (ModelFileError naming the tensor).
    """
    device = resolve_device(device)
    resolved = _resolve(name_or_path)
    if isinstance(resolved, SRModel):
        return resolved.to(device).eval()
    path = resolved
    try:
        if is_pickle(path):
            if not allow_pickle:
                raise ModelFileError(
                    f"{path}: this looks like a pickled PyTorch checkpoint; only .safetensors "
                    "model files are loaded (pickles can run code). If you trust the file, "
                    "pass allow_pickle=True"
                )
            tensors, meta = _load_pickle(path)
        else:
            tensors, meta = read_safetensors(path)
    except CheckpointError as exc:
        raise ModelFileError(str(exc)) from None
    config = _config_from(path, meta)
    model = new_model(config)
    _check_fit(path, model, tensors)
    _check_finite(path, tensors)
    model.load_state_dict(tensors, strict=True)
    model.metadata = dict(meta)
    return model.to(device).eval()


def _load_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise ModelFileError(f"{path}: a pickled checkpoint needs its ModelConfig in {sidecar}")
    tensors = load_pickle_state_dict(path)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": sidecar.read_text()}
    return tensors, meta
