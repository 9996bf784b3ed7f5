"""Reading and writing `.safetensors` files with string metadata; pickles are refused.

Model files are data: a pickled PyTorch checkpoint can run arbitrary code when loaded,
so `read_safetensors` detects one by its magic bytes and refuses it with a message that
says why. Writing is atomic (temporary sibling, then rename), so a crash never leaves
a half-written model behind.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from napari_srgan_sqe.errors import UserFacingError
from napari_srgan_sqe.io.atomic import atomic_path

if TYPE_CHECKING:
    import torch

__all__ = ["CheckpointError", "read_safetensors", "read_safetensors_metadata", "write_safetensors"]

_MAX_HEADER = 100 * 1024 * 1024
_PICKLE_MSG = (
    "this looks like a pickled PyTorch checkpoint; only .safetensors model files are "
    "loaded (pickles can run code)"
)


class CheckpointError(UserFacingError, ValueError):
    """A weights file is missing, not safetensors, truncated or has a bad header."""


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `tensors` and string `metadata` to `path` atomically; returns the path."""
    from safetensors.torch import save

    path = Path(path)
    bad = {k: type(v).__name__ for k, v in (metadata or {}).items() if not isinstance(v, str)}
    if bad:
        raise CheckpointError(f"metadata values must be strings; not: {bad}")
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = save(flat, metadata=dict(metadata or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A plausible header length (fits in the file) followed by a JSON object."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= _MAX_HEADER and 8 + n <= size


def _looks_like_pickle(head: bytes) -> bool:
    """Zip (torch.save) or raw pickle (PROTO opcode 0x80, protocol 2..5) magic bytes."""
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05")


def _data_start(path: Path, head: bytes, size: int) -> int:
    """The byte offset where tensor data starts, from the first 9 bytes; checks sizes.

    Safetensors is recognised first: its 8-byte little-endian header length may well
    start with 0x80 (a header of 128 + 256 k bytes), which is also the pickle magic.
    """
    if not _looks_like_safetensors(head, size) and _looks_like_pickle(head):
        raise CheckpointError(f"{path}: {_PICKLE_MSG}")
    if size < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes; truncated?)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER or n < 2:
        raise CheckpointError(f"{path}: not a safetensors file (bad header length {n})")
    if 8 + n > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file (header needs {8 + n} bytes, file has {size})"
        )
    return 8 + n


def _read_header(path: Path) -> tuple[dict, int, int]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
        start = _data_start(path, head, size)
        f.seek(8)
        raw = f.read(start - 8)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file (bad header: {exc})") from None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointError(f"{path}: bad safetensors header entry for {name!r}") from None
    if start + end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file (data needs {start + end} bytes, file has {size})"
        )
    return header, start, size


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Only the string metadata of a safetensors file (cheap: reads the header)."""
    path = Path(path)
    header, _, _ = _read_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: bad safetensors metadata (not a mapping)")
    return {str(k): str(v) for k, v in meta.items()}


def read_safetensors(
    path: str | os.PathLike[str], *, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the string metadata of a safetensors file, validated first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    metadata = read_safetensors_metadata(path)
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file: {exc}") from None
    return tensors, metadata


def load_pickle_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a PyTorch pickle, for users who explicitly allow pickles.

    Uses `torch.load(weights_only=True)`, which refuses arbitrary objects.
    """
    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure is reported the same way
        raise CheckpointError(f"{path}: cannot load as a PyTorch checkpoint: {exc}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: the checkpoint is not a plain state dict of tensors")
    return dict(obj)


def is_pickle(path: str | os.PathLike[str]) -> bool:
    """Whether a file starts like a PyTorch pickle (zip or raw pickle protocol)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    return not _looks_like_safetensors(head, size) and _looks_like_pickle(head)
