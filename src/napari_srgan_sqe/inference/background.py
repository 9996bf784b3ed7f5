"""What the viewer's background workers share: cutting a view into pieces, telling
listeners, and stopping cleanly when the interpreter exits.

`LiveLevel0` (the SR the viewer shows) and `LiveDeparture` (the departure map) both
compute a view in pieces, centre first, on a thread of their own, and call plain
functions when a piece lands. A worker still inside torch while the interpreter tears
torch down aborts the process ('terminate called without an active exception'), so
every worker is `track`ed and closed at exit, after its current piece.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

__all__ = ["missing_pieces", "notify", "track"]

log = logging.getLogger(__name__)

EXIT_WAIT_S = 30.0


class _Closable(Protocol):
    def close(self, timeout: float | None = None) -> None: ...


def missing_pieces(
    covered: np.ndarray, y0: int, x0: int, piece: int
) -> list[tuple[int, int, int, int]]:
    """The box at (y0, x0) with mask `covered` cut into pieces of at most `piece` px a
    side (as even as the size allows), each shrunk to the pixels it lacks, as
    (y0, y1, x0, x1) nearest the box's centre first."""
    h, w = covered.shape
    pieces: list[tuple[int, int, int, int]] = []
    ys = np.linspace(0, h, -(-h // piece) + 1).round().astype(int)
    xs = np.linspace(0, w, -(-w // piece) + 1).round().astype(int)
    for a, b in zip(ys[:-1], ys[1:]):
        for c, d in zip(xs[:-1], xs[1:]):
            lacks = ~covered[a:b, c:d]
            if not lacks.any():
                continue
            rows, cols = np.flatnonzero(lacks.any(axis=1)), np.flatnonzero(lacks.any(axis=0))
            py0, px0 = y0 + int(a + rows[0]), x0 + int(c + cols[0])
            pieces.append((py0, y0 + int(a + rows[-1]) + 1, px0, x0 + int(c + cols[-1]) + 1))
    cy, cx = y0 + h / 2, x0 + w / 2
    pieces.sort(key=lambda p: ((p[0] + p[1]) / 2 - cy) ** 2 + ((p[2] + p[3]) / 2 - cx) ** 2)
    return pieces


def notify(listeners: Iterable[Callable[[str], None]], event: str, what: str) -> None:
    """Call every listener with `event`; one that fails (a closed viewer, a deleted
    layer) is logged at debug level and does not stop the others. `what` names the
    worker in the log."""
    for fn in list(listeners):
        try:
            fn(event)
        except Exception:  # noqa: BLE001 - listeners belong to the GUI, which may be gone
            log.debug("%s listener failed", what, exc_info=True)


_WORKERS: weakref.WeakSet[_Closable] = weakref.WeakSet()


def track(worker: _Closable) -> None:
    """Close `worker` (after its current piece) when the interpreter exits."""
    _WORKERS.add(worker)


def _stop_at_exit() -> None:
    """Stop multi-step inference (SR3 sampling, self-ensembles) at its next step and let
    the workers finish their current piece before torch is torn down."""
    method = sys.modules.get("napari_srgan_sqe.models.method")
    if method is not None:  # else no model was ever loaded: nothing runs (and no torch)
        method.cancel_inference()
    for worker in list(_WORKERS):
        worker.close(timeout=EXIT_WAIT_S)


atexit.register(_stop_at_exit)
# Thread pools (dask's, napari's workers) are joined before atexit handlers run, so the
# stop is also registered to run before that join where Python allows it.
_register_early = getattr(threading, "_register_atexit", None)
if _register_early is not None:
    _register_early(_stop_at_exit)
