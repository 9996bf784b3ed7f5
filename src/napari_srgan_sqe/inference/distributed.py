"""Export chunks computed on a dask.distributed cluster (`enhance --scheduler ADDRESS`).

How the work is split:
- The model travels once per worker: `ModelPlugin` carries the model file's bytes
  (safetensors, a few MB) and each worker loads it at registration into a process
  cache keyed by the model identity. Tasks carry only a small `ChunkSpec` (slide
  path, region, model identity, tile options), never a pickled model.
- A worker opens the slide itself by path (the slide must be readable at the same
  path on every worker: a shared file system), builds one local engine per spec and
  keeps it, so its SR tile cache and batching work as in a local run.
- The writer stays on the client, chunk by chunk (io.pyramid: resumable, atomic); a
  `Prefetcher` keeps about two tasks per worker thread in flight, in the writer's
  row-major order, so all GPUs stay busy while memory stays bounded.

Run one worker per GPU, one thread each, e.g. on every GPU machine:

    dask scheduler                                  # once, on any machine
    CUDA_VISIBLE_DEVICES=0 dask worker tcp://HOST:8786 --nworkers 1 --nthreads 1 --resources GPU=1
    CUDA_VISIBLE_DEVICES=1 dask worker tcp://HOST:8786 --nworkers 1 --nthreads 1 --resources GPU=1
    srgan-sqe enhance slide.svs out.ome.zarr --scheduler tcp://HOST:8786

When every worker advertises a `GPU` resource, each task asks for one GPU.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_srgan_sqe.errors import UserFacingError

try:  # distributed is a dependency, but keep this module importable without it
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object  # type: ignore[misc,assignment]

__all__ = [
    "CONNECT_TIMEOUT",
    "ChunkSpec",
    "ModelPlugin",
    "Prefetcher",
    "SchedulerError",
    "check_scheduler",
    "connect",
    "remote_level0",
]

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a scheduler to answer (`connect`); a refused or unresolvable
address fails at once."""


class SchedulerError(UserFacingError, RuntimeError):
    """The dask.distributed scheduler cannot be reached; the message names its address."""


_MODELS: OrderedDict[str, Any] = OrderedDict()  # a small LRU, like _ENGINES
_ENGINES: OrderedDict[ChunkSpec, Any] = OrderedDict()
_BUILDING: dict[ChunkSpec, threading.Lock] = {}  # one build lock per spec being built
_LOCK = threading.Lock()
MAX_MODELS = 4
MAX_ENGINES = 4
CHUNKS_COMPUTED = 0  # in this process, for tests and diagnostics


@dataclass(frozen=True)
class ChunkSpec:
    """Everything a worker needs to compute SR level-0 chunks of one export."""

    path: str
    region: tuple[int, int, int, int]  # x, y, w, h in LR level-0 px
    model_id: str
    device: str
    tile: int
    chunk_tiles: int
    batch: int
    tissue: tuple[tuple[bool, ...], ...] | None = None  # per tile: run the model?
    seed: int | None = None  # of a stochastic model


class ModelPlugin(WorkerPlugin):
    """Loads one model on every worker, once, from the bytes of its model file."""

    def __init__(self, model_id: str, payload: bytes) -> None:
        self.name = f"srgan-sqe-model-{model_id}"
        self.model_id = model_id
        self.payload = payload

    def setup(self, worker: Any = None) -> None:
        from napari_srgan_sqe.models.modelfile import load_model

        with _LOCK:
            if self.model_id in _MODELS:
                return
            fd, tmp = tempfile.mkstemp(suffix=".safetensors")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(self.payload)
                _MODELS[self.model_id] = load_model(tmp)
                while len(_MODELS) > MAX_MODELS:
                    _MODELS.popitem(last=False)
            finally:
                os.unlink(tmp)


def model_payload(model: Any) -> bytes:
    """The model file's bytes (safetensors + config), as `save_model` writes them."""
    from napari_srgan_sqe.models.modelfile import save_model

    with tempfile.TemporaryDirectory() as d:
        path = save_model(model, Path(d) / "model.safetensors")
        return Path(path).read_bytes()


def _cached_engine(spec: ChunkSpec) -> Any:
    with _LOCK:
        eng = _ENGINES.get(spec)
        if eng is not None:
            _ENGINES.move_to_end(spec)
        return eng


def _engine(spec: ChunkSpec) -> Any:
    """This process's engine for `spec` (built once, even by concurrent threads of a
    worker: a per-spec build lock; the model from ModelPlugin)."""
    eng = _cached_engine(spec)
    if eng is not None:
        return eng
    with _LOCK:
        building = _BUILDING.setdefault(spec, threading.Lock())
    try:
        with building:  # a second thread waits here for the first one's engine
            eng = _cached_engine(spec)
            if eng is not None:
                return eng
            with _LOCK:
                model = _MODELS.get(spec.model_id)
                if model is None:
                    raise RuntimeError(
                        f"model {spec.model_id} is not loaded on this worker "
                        "(ModelPlugin not registered)"
                    )
                _MODELS.move_to_end(spec.model_id)
            eng = _build_engine(spec, model)
            with _LOCK:
                _ENGINES[spec] = eng
                while len(_ENGINES) > MAX_ENGINES:
                    _ENGINES.popitem(last=False)
            return eng
    finally:
        with _LOCK:
            if _BUILDING.get(spec) is building:
                _BUILDING.pop(spec, None)


def _build_engine(spec: ChunkSpec, model: Any) -> Any:
    from napari_srgan_sqe.inference.engine import super_resolve
    from napari_srgan_sqe.inference.tiling import TileMask
    from napari_srgan_sqe.io.slides import open_slide

    slide = open_slide(spec.path)
    lr0 = slide.levels[0]
    x, y, w, h = spec.region
    whole = (x, y, w, h) == (0, 0, int(lr0.shape[1]), int(lr0.shape[0]))
    return super_resolve(
        lr0,
        model,
        device=spec.device,
        tile=spec.tile,
        batch=spec.batch,
        chunk_tiles=spec.chunk_tiles,
        cache_mb=64,
        use_model=TileMask(spec.tissue) if spec.tissue is not None else None,
        region=None if whole else (x, y, w, h),
        seed=spec.seed,
        coding=slide.coding,  # as the exporting process tells a conditioned model
    )


def compute_chunk(spec: ChunkSpec, cy: int, cx: int) -> np.ndarray:
    """SR level-0 chunk (cy, cx) of the export described by `spec` (runs on a worker)."""
    global CHUNKS_COMPUTED
    out = _engine(spec)._level0.chunk((cy, cx, 0))
    with _LOCK:
        CHUNKS_COMPUTED += 1
    return out


def check_scheduler(scheduler: Any, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """`SchedulerError` now, before any work, when no scheduler listens at the address
    `scheduler` (a Client, or an address other than tcp://, is not checked here)."""
    if isinstance(scheduler, str | os.PathLike):
        _probe(str(scheduler), timeout)


def _probe(address: str, timeout: float) -> None:
    """Fail fast, naming `address`, when nothing listens at a tcp:// address (a plain
    TCP connect: refused at once instead of after the client's retries)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "") or parts.hostname is None:
        return  # tls://, ucx://, inproc:// ...: the client says what is wrong
    try:
        port = parts.port or 8786
    except ValueError:
        raise SchedulerError(f"not a scheduler address: {address!r}") from None
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except TimeoutError:
        raise SchedulerError(
            f"cannot reach the dask scheduler at {address}: no answer within {timeout:g} s"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SchedulerError(
            f"cannot reach the dask scheduler at {address}: {reason} (is `dask scheduler` "
            "running there, and is the address right?)"
        ) from None


def connect(scheduler: Any, *, timeout: float = CONNECT_TIMEOUT) -> tuple[Any, bool]:
    """(Client, whether we own it) for an address or an existing Client.

    An address where no scheduler answers raises `SchedulerError` naming it: at once
    when the connection is refused (nothing listens on the port) or the host is
    unknown, else after `timeout` seconds.
    """
    from distributed import Client

    if isinstance(scheduler, Client):
        return scheduler, False
    address = str(scheduler)
    _probe(address, timeout)
    try:
        return Client(address, set_as_default=False, timeout=f"{timeout}s"), True
    except (OSError, TimeoutError) as exc:
        raise SchedulerError(f"cannot connect to the dask scheduler at {address}: {exc}") from None


class Prefetcher:
    """Runs chunk tasks on the cluster ahead of the writer, a bounded number at a time."""

    def __init__(
        self,
        client: Any,
        spec: ChunkSpec,
        grid: tuple[int, int],
        *,
        ahead: int | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.client, self.spec = client, spec
        self.ny, self.nx = grid
        info = client.scheduler_info(n_workers=-1).get("workers", {})
        threads = sum(int(w.get("nthreads", 1)) for w in info.values()) or 1
        self.ahead = ahead if ahead is not None else 2 * threads
        gpu = bool(info) and all("GPU" in w.get("resources", {}) for w in info.values())
        self.resources = {"GPU": 1} if gpu else None
        self._futures: dict[tuple[int, int], Any] = {}
        self._seen: set[tuple[int, int]] = set()  # submitted once, ever
        self._lock = threading.Lock()
        self.submitted = 0

    def _submit(self, c: tuple[int, int]) -> None:
        if c not in self._seen:
            self._seen.add(c)
            self._futures[c] = self.client.submit(
                compute_chunk, self.spec, c[0], c[1], pure=False, resources=self.resources
            )
            self.submitted += 1

    def get(self, block_id: tuple[int, ...]) -> np.ndarray:
        """Chunk block_id[:2], submitting it and the next `ahead` chunks if needed."""
        cy, cx = block_id[0], block_id[1]
        with self._lock:
            start = cy * self.nx + cx
            for k in range(start, min(start + self.ahead + 1, self.ny * self.nx)):
                self._submit(divmod(k, self.nx))
            fut = self._futures.pop((cy, cx), None)
            if fut is None:  # asked for twice (a retried unit): compute it again
                fut = self.client.submit(
                    compute_chunk, self.spec, cy, cx, pure=False, resources=self.resources
                )
        return np.asarray(fut.result())

    def cancel(self) -> None:
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
        if futures:
            self.client.cancel(futures)


def remote_level0(
    client: Any, spec: ChunkSpec, model: Any, chunks: tuple[tuple[int, ...], ...]
) -> tuple[Any, Prefetcher]:
    """A local dask array of SR level 0 whose chunks are computed on the cluster.

    Registers the model on the workers first. Compute it with a local scheduler
    (the threads of this process); the chunk tasks themselves go to the cluster.
    """
    import dask.array as da

    client.register_plugin(ModelPlugin(spec.model_id, model_payload(model)))
    pre = Prefetcher(client, spec, (len(chunks[0]), len(chunks[1])))

    def fetch(block_id: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
        return pre.get(block_id)

    arr = da.map_blocks(
        fetch,
        chunks=chunks,
        dtype=np.uint8,
        meta=np.empty((0, 0, 0), np.uint8),
        name=f"srgan-sqe-remote-{spec.model_id}-{abs(hash(spec)):x}",
    )
    return arr, pre
