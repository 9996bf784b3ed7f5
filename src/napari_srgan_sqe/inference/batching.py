"""Batching of tiles requested concurrently, one forward at a time (flat combining).

dask runs one task per SR chunk on several threads (napari's slicing, the exporter's
units). Each task hands its missing tiles to the `Combiner` of its Predictor and
waits; whichever thread holds the device runs everything queued, oldest first, in
batches of up to `max_batch` tiles of one shape, and the others pick up their
results. So tiles requested together are batched whatever chunk they belong to,
the device never runs two forwards at once (no oversubscribed CPU threads, no
doubled GPU memory), reading and stitching in other threads overlap with the
forward, and there is no background thread to start or stop.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

__all__ = ["Combiner", "combiner_for"]

Origin = tuple[int, int]


class Combiner:
    """Batches tiles from concurrent callers into one forward at a time (flat combining)."""

    def __init__(
        self, run: Callable[[np.ndarray, int, list[Origin]], np.ndarray], max_batch: int
    ) -> None:
        self._run = run
        self.max_batch = max(1, int(max_batch))
        self._queue: deque[tuple[np.ndarray, int, Origin, Future]] = deque()
        self._qlock = threading.Lock()
        self._device = threading.Lock()
        self.batches = 0  # forward calls run, and tiles in them (mean batch = ratio)
        self.tiles = 0

    def __len__(self) -> int:
        return len(self._queue)

    def compute(
        self,
        tiles: Sequence[np.ndarray],
        crop: int,
        origins: Sequence[Origin] | None = None,
    ) -> list[tuple[np.ndarray, float]]:
        """(output, device seconds share) for each input tile, computed in batches;
        `origins`: each tile's top-left (y, x) in the slide's LR px (see Predictor.run)."""
        futures: list[Future] = [Future() for _ in tiles]
        where = list(origins) if origins is not None else [(0, 0)] * len(tiles)
        with self._qlock:
            self._queue.extend(
                (t, crop, o, f) for t, o, f in zip(tiles, where, futures, strict=True)
            )
        with self._device:  # whoever holds the device runs the queue, FIFO
            while not all(f.done() for f in futures):
                self._run_batch(self._take())
        return [f.result() for f in futures]

    def _take(self) -> list[tuple[np.ndarray, int, Origin, Future]]:
        with self._qlock:
            first = self._queue.popleft()
            key = (first[0].shape, first[1])
            batch = [first]
            rest: deque[tuple[np.ndarray, int, Origin, Future]] = deque()
            while self._queue:
                item = self._queue.popleft()
                if len(batch) < self.max_batch and (item[0].shape, item[1]) == key:
                    batch.append(item)
                else:
                    rest.append(item)
            self._queue.extendleft(reversed(rest))
        return batch

    def _run_batch(self, batch: list[tuple[np.ndarray, int, Origin, Future]]) -> None:
        t0 = time.perf_counter()
        try:
            out = self._run(np.stack([b[0] for b in batch]), batch[0][1], [b[2] for b in batch])
        except BaseException as exc:  # every waiter gets the error, none hangs
            for _, _, _, f in batch:
                f.set_exception(exc)
            return
        share = (time.perf_counter() - t0) / len(batch)
        self.batches += 1
        self.tiles += len(batch)
        for i, (_, _, _, f) in enumerate(batch):
            f.set_result((out[i], share))


_COMBINERS: weakref.WeakKeyDictionary[Any, Combiner] = weakref.WeakKeyDictionary()
_COMBINERS_LOCK = threading.Lock()


def combiner_for(predictor: Any, max_batch: int) -> Combiner:
    """One combiner per Predictor, so pyramids sharing a device never run at once.

    Pyramids sharing a Predictor share its combiner; its batch is the largest asked
    for (the Predictor still halves it on out-of-memory), not the last one.
    """
    with _COMBINERS_LOCK:
        comb = _COMBINERS.get(predictor)
        if comb is None:
            ref = weakref.ref(predictor)  # a strong reference would keep it alive forever

            def run(x: np.ndarray, crop: int, origins: list[Origin]) -> np.ndarray:
                pred = ref()
                assert pred is not None, "the combiner outlived its predictor"
                return pred.run(x, crop=crop, origins=origins)

            comb = Combiner(run, max_batch)
            _COMBINERS[predictor] = comb
        else:  # pyramids sharing a predictor: the largest batch any of them asked for
            comb.max_batch = max(comb.max_batch, int(max_batch))
        return comb
