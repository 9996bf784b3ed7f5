"""The method interface: what the rest of the package may know about a model.

Inference, caches, export and fine-tuning talk to a model only through the
`SRMethod` protocol and its `MethodDescriptor`; the networks behind it are built by
the architecture registry (`models.architectures`). A network implements `SRNetwork`:
`scale`, `halo`, a differentiable `forward` for training, an `infer_batch` that owns
inference (one pass, a self-ensemble, or several sampling steps), and its trainable
parameter groups.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

from napari_srgan_sqe.errors import UserFacingError

__all__ = [
    "KINDS",
    "InferenceCancelled",
    "cancel_inference",
    "check_cancelled",
    "Origins",
    "TILINGS",
    "MethodDescriptor",
    "SRMethod",
    "SRNetwork",
    "StochasticModelError",
    "parameter_groups_by_children",
    "require_deterministic",
]

Tiling = Literal["halo", "overlap", "whole"]
Kind = Literal["deterministic", "stochastic", "zero-shot"]
Speed = Literal["fast", "medium", "slow"]
TILINGS: tuple[str, ...] = ("halo", "overlap", "whole")
Origins = Sequence[tuple[int, int]] | None
"""Where each input window's top-left pixel lies in the slide (LR px; negative inside a
mirrored margin), for methods whose output depends on position (seeded noise)."""
KINDS: tuple[str, ...] = ("deterministic", "stochastic", "zero-shot")


class StochasticModelError(UserFacingError, ValueError):
    """A stochastic model was given to a path that needs a deterministic one."""


class InferenceCancelled(RuntimeError):
    """Inference stopped between its steps because the application is closing."""


_CLOSING = threading.Event()


def cancel_inference() -> None:
    """Make every multi-pass inference (sampling steps, self-ensembles) stop at its next
    step with `InferenceCancelled`: called when the process exits, so that no thread is
    left inside torch while the interpreter tears it down."""
    _CLOSING.set()


def check_cancelled() -> None:
    """Raise `InferenceCancelled` after `cancel_inference` (call between steps)."""
    if _CLOSING.is_set():
        raise InferenceCancelled("inference stopped: the application is closing")


@dataclass(frozen=True)
class MethodDescriptor:
    """What inference needs to know about a method.

    - `tiling`: 'halo' = read each tile with a `halo` LR px margin and crop it from
      the output (exact: tiled equals whole); 'overlap' = the same reading and
      cropping with a margin (`halo` LR px) that is not the receptive field but wide
      enough that neighbouring windows agree within a measured tolerance (diffusion
      U-Nets, whose sampling steps widen the field; their noise is keyed to slide
      position, so overlapping windows start from the same noise); 'whole' = the
      region in one piece.
    - `stochastic`: the output depends on a seed (then `steps` is the number of
      sampling steps); a seed is part of every cache key.
    - `kind`: 'deterministic', 'stochastic', or 'zero-shot' (trained on the image
      it is applied to).
    - `precisions`: the arithmetic it may run in ('fp32', 'bf16', 'fp16').
    - `flops_per_pixel`: multiply-adds per output pixel (x2 for FLOPs), for speed classes.
    """

    arch: str
    scale: int
    halo: int
    tiling: Tiling = "halo"
    stochastic: bool = False
    steps: int = 1
    kind: Kind = "deterministic"
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    macs_per_pixel: int = 0
    alignment: int = 1
    """Windows agree only when their LR origins are congruent modulo this (strided
    layers, e.g. a U-Net's down-sampling): the engine starts every window at the same
    phase as the whole-image reference (origin -halo)."""

    @property
    def speed_class(self) -> Speed:
        """'fast' under 50 k multiply-adds per output pixel, 'slow' over 250 k."""
        work = self.macs_per_pixel * self.steps
        if work < 50_000:
            return "fast"
        return "medium" if work < 250_000 else "slow"

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["precisions"] = list(self.precisions)
        d["speed_class"] = self.speed_class
        return d


@runtime_checkable
class SRNetwork(Protocol):
    """A super-resolution network as the architecture registry builds it."""

    scale: int
    halo: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def infer_batch(
        self, x: torch.Tensor, *, seed: int | None = None, origins: Origins = None
    ) -> torch.Tensor:
        """Inference on float NCHW [0, 1] -> NCHW at `scale` x, unclamped (no grad).
        `origins`: each window's LR position in the slide (used by stochastic methods)."""
        ...

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of trainable parameters: 'all' and 'last' at least."""
        ...

    def macs_per_pixel(self) -> int:
        """Multiply-adds per output pixel of one inference pass."""
        ...


class SRMethod(Protocol):
    """A loaded model as inference, caches, export and fine-tuning see it."""

    @property
    def name(self) -> str: ...

    @property
    def scale(self) -> int: ...

    @property
    def halo(self) -> int: ...

    @property
    def descriptor(self) -> MethodDescriptor: ...

    @property
    def identity(self) -> str: ...

    def infer_batch(
        self, x: torch.Tensor, *, seed: int | None = None, origins: Origins = None
    ) -> torch.Tensor: ...

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]: ...

    def to(self, device: torch.device | str, /) -> SRMethod: ...

    def eval(self) -> SRMethod: ...


def require_deterministic(model: SRMethod, what: str) -> None:
    """StochasticModelError when `model` is stochastic and `what` needs one output per input."""
    desc = model.descriptor
    if desc.stochastic:
        raise StochasticModelError(
            f"{what} needs a deterministic model, and {model.name!r} is stochastic "
            f"({desc.arch}: each seed gives another image); choose a deterministic model "
            "such as srgan-sqe-he-x4"
        )


def parameter_groups_by_children(
    net: nn.Module, last: tuple[str, ...]
) -> dict[str, list[nn.Parameter]]:
    """'all' parameters, and 'last': those of the children named in `last`."""

    def params(names: Iterator[tuple[str, nn.Module]]) -> list[nn.Parameter]:
        return [p for _, child in names for p in child.parameters()]

    children = list(net.named_children())
    return {
        "all": list(net.parameters()),
        "last": params(iter([(n, c) for n, c in children if n in last])),
    }
