"""Choosing the device a model runs on: 'auto', 'cuda[:i]', 'mps' or 'cpu', checked to
exist here, and the device's out-of-memory signals. Used by model loading
(`models.modelfile`) and by `Predictor`; imports neither."""

from __future__ import annotations

import contextlib

import torch

from napari_srgan_sqe.errors import UserFacingError

__all__ = ["DeviceError", "empty_cache", "is_out_of_memory", "resolve_device"]


class DeviceError(UserFacingError, RuntimeError):
    """The requested device does not exist here, or is out of memory even for one tile."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError MPS raises when out of memory."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "MPS backend out of memory" in str(exc)


def empty_cache(device: torch.device) -> None:
    with contextlib.suppress(Exception):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        elif device.type == "mps":
            torch.mps.empty_cache()


def _available() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.insert(0, "mps")
    return names


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu; 'cuda[:i]', 'mps', 'cpu' checked to exist."""
    if isinstance(name, torch.device):
        name = str(name)
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; choose auto, cuda, mps or cpu") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} requested but CUDA is not available here (available: {', '.join(_available())})"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(
                f"device 'mps' requested but it is not available here (available: {', '.join(_available())})"
            )
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}; choose auto, cuda, mps or cpu")
    return dev
