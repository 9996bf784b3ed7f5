"""Running a model on batches of tiles: device, precision and the tensor contract."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from napari_srgan_sqe.errors import UserFacingError
from napari_srgan_sqe.io.errors import check_unit_range
from napari_srgan_sqe.models.coding import CodingLike, coding_vector, normalise_coding
from napari_srgan_sqe.models.device import (
    DeviceError,
    empty_cache,
    is_out_of_memory,
    resolve_device,
)
from napari_srgan_sqe.models.method import MethodDescriptor, SRMethod
from napari_srgan_sqe.models.modelfile import load_model

__all__ = ["DeviceError", "NonFiniteOutputError", "Predictor", "resolve_device"]

log = logging.getLogger(__name__)


class NonFiniteOutputError(UserFacingError, RuntimeError):
    """The network returned NaN or infinite values (they would be written as black)."""


class Predictor:
    """A model on a device, applied to batches of RGB tiles.

    Tensor contract (see docs/architecture.md):
    - `model`: an SRMethod, or a bundled model name / `.safetensors` path (loaded).
    - input: tiles (N, h, w, 3) NHWC, uint8 in [0, 255] or float in [0, 1] (float
      outside it, or NaN, raises `io.errors.DataError` naming the range); inside,
      float32 NCHW in [0, 1] (channels_last memory format).
    - the model's `infer_batch(x, seed=)` (the method interface) returns
      (N, 3, h*s, w*s), unclamped; for 'halo' tiling an output pixel depends only on
      input pixels within `halo` LR px. Convolutions zero-pad, so a tile must carry a
      margin of `halo` LR px read from its neighbours (or, at the image border, a
      half-sample symmetric extension d c b a | a b c d).
    - `run(tiles, crop=c)` removes `c * s` HR px from every side, clamps to [0, 1] and
      rounds to uint8 on the device before the copy to the host: (N, (h-2c)s, (w-2c)s, 3).
      A NaN or infinite value in the kept output raises NonFiniteOutputError (rounded,
      NaN would become black pixels); the check is one sum per batch.
    - precision: fp32 on CPU/MPS; on CUDA autocast to bf16 (fp16 where bf16 is not
      supported). Out-of-memory (CUDA or MPS) halves the batch and retries down to 1
      tile; the reduced batch is kept (`max_batch`) for later calls. Out of memory
      for one tile raises DeviceError (use smaller tiles or the CPU).
    - `seed`: passed to every `infer_batch` call; it matters only for stochastic
      methods (`descriptor.stochastic`), whose output it fixes.
    - `coding`: how the input tiles were stored (`models.coding.CodingLike`: a
      `SlideCoding`, ('jpeg', 30), 'none', None for unknown). A coding-conditioned
      network (`conditioned`) is told it with every batch; other models ignore it.
    Torch's thread count is left as the user set it.
    """

    def __init__(
        self,
        model: SRMethod | str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        max_batch: int = 16,
        seed: int | None = None,
        coding: CodingLike = None,
    ) -> None:
        if isinstance(model, str | os.PathLike):  # a bundled name or a model file
            model = load_model(model)
        self.device = resolve_device(device)
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        desc = model.descriptor
        if precision == "auto":
            precision = "fp32"
            if self.device.type == "cuda":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
                if precision not in desc.precisions:
                    precision = "fp32"
        elif precision not in desc.precisions:
            raise ValueError(
                f"model {model.name!r} runs in {', '.join(desc.precisions)}, not {precision}"
            )
        self.precision = precision
        self.max_batch = max(1, int(max_batch))
        self.seed = seed
        self.model: SRMethod = model.to(self.device).eval()
        net = getattr(self.model, "generator", None)
        self._coded_net = net if getattr(net, "coding_net", None) is not None else None
        self.coding = normalise_coding(coding)
        self._coding_vec = coding_vector(coding)
        if isinstance(self.model, torch.nn.Module):
            # torch's Module.to overloads omit memory_format, which it accepts.
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @property
    def descriptor(self) -> MethodDescriptor:
        return self.model.descriptor

    @property
    def conditioned(self) -> bool:
        """Whether the model reads the input's coding (`coding`)."""
        return self._coded_net is not None

    @property
    def coding_vector(self) -> tuple[float, ...]:
        """The vector a conditioned model is told (`models.coding.coding_vector`)."""
        return self._coding_vec

    @property
    def scale(self) -> int:
        return int(self.model.scale)

    @property
    def halo(self) -> int:
        return int(self.model.halo)

    @property
    def device_name(self) -> str:
        """What was picked, e.g. 'cpu' or 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
        if self.device.type == "cuda":
            idx = (
                self.device.index if self.device.index is not None else torch.cuda.current_device()
            )
            return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
        return str(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32" or self.device.type == "cpu":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _forward(
        self, batch: np.ndarray, crop: int, origins: Sequence[tuple[int, int]] | None
    ) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        x = x.contiguous(memory_format=torch.channels_last)
        c = crop * self.scale
        with torch.inference_mode():
            if self._coded_net is not None:  # set per batch: predictors may share a model
                self._coded_net.set_coding(self._coding_vec)
            with self._autocast():
                y = self.model.infer_batch(x, seed=self.seed, origins=origins)
            if c:
                y = y[:, :, c : y.shape[2] - c, c : y.shape[3] - c]
            y = y.float()
            # NaN and inf propagate through a sum: one cheap reduction (30x cheaper than
            # isfinite().all() on the CPU), confirmed exactly only when it is not finite.
            if not bool(torch.isfinite(y.sum())) and not bool(torch.isfinite(y).all()):
                raise NonFiniteOutputError(self._non_finite_message(y))
            y = y.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
            return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def _non_finite_message(self, y: torch.Tensor) -> str:
        bad = ~torch.isfinite(y)
        share = float(bad.float().mean()) * 100
        name = self.model.name
        why = (
            f"{self.precision} arithmetic on {self.device_name} may overflow: try the CPU "
            "(--device cpu, fp32), or the model is damaged"
            if self.precision != "fp32"
            else "the model is damaged or its training diverged: use another model"
        )
        return (
            f"model {name!r} produced NaN or infinite values ({share:.3g}% of a batch of "
            f"tiles); stopped rather than write them as black pixels: {why}"
        )

    def run(
        self,
        tiles: np.ndarray,
        *,
        crop: int = 0,
        origins: Sequence[tuple[int, int]] | None = None,
    ) -> np.ndarray:
        """Super-resolve tiles (N, h, w, 3) -> uint8 (N, (h-2crop)*s, (w-2crop)*s, 3).

        `origins`: (y, x) in the slide's LR px of each tile's top-left pixel (negative in
        a mirrored margin); stochastic methods key their noise to it, so overlapping
        tiles agree. None: every tile at (0, 0)."""
        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"expected tiles (N, h, w, 3), got shape {tiles.shape}")
        if tiles.dtype != np.uint8 and not np.issubdtype(tiles.dtype, np.floating):
            raise ValueError(f"tiles must be uint8 or float in [0, 1], got dtype {tiles.dtype}")
        if tiles.dtype != np.uint8:  # 0-255 as float would come out white; NaN as black
            check_unit_range(tiles, "the input tiles")
        n, h, w, _ = tiles.shape
        if origins is not None and len(origins) != n:
            raise ValueError(f"{len(origins)} origins for {n} tiles")
        if crop < 0 or 2 * crop >= min(h, w):
            raise ValueError(f"crop {crop} leaves nothing of a {h} x {w} tile")
        out = np.empty((n, (h - 2 * crop) * self.scale, (w - 2 * crop) * self.scale, 3), np.uint8)
        batch, i = self.max_batch, 0
        while i < n:
            try:
                part = None if origins is None else origins[i : i + batch]
                out[i : i + batch] = self._forward(tiles[i : i + batch], crop, part)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                empty_cache(self.device)
                if batch == 1:
                    raise DeviceError(
                        f"out of memory on {self.device_name} even for one {h} x {w} tile; "
                        "use a smaller tile (--tile) or the CPU (--device cpu)"
                    ) from None
                batch = min(batch, n - i) // 2 or 1
                self.max_batch = min(self.max_batch, batch)  # remembered for later calls
                log.warning("out of device memory: batch of tiles reduced to %d", batch)
                continue
            i += batch
        return out

    def predict_image(self, img: np.ndarray) -> np.ndarray:
        """The whole-image reference: pad by `halo` (half-sample symmetric), run, crop.

        uint8 in -> uint8 out; float in [0, 1] -> float32 out (quantised to 1/255 steps).
        """
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
        p = self.halo
        padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="symmetric")
        out = self.run(padded[None], crop=p, origins=[(-p, -p)])[0]
        if img.dtype == np.uint8:
            return out
        return out.astype(np.float32) / 255.0
