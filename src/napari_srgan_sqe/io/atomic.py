"""Write files and directories atomically: a temporary sibling, renamed on success.

A reader (or a user) never sees a half-written export or checkpoint under its final
name: an interrupted or failed write leaves the previous file (if any) untouched and
removes the temporary one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "remove_path"]


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file's data (or a directory entry) to disk; best effort."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    with contextlib.suppress(OSError):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it over `path` when the block succeeds.

    The temporary name is hidden (leading dot) and keeps the extension, so writers
    that infer the format from it still work. Files are replaced atomically
    (`os.replace`); a directory replaces an existing one by two renames, so at no time
    is a half-written tree under the final name. On any exception, including
    KeyboardInterrupt, the temporary path is removed and the exception propagates.
    """
    final = Path(path)
    parent = final.parent
    if not parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "the folder to write into does not exist", str(parent)
        )
    token = uuid.uuid4().hex[:8]
    tmp = parent / f".{final.stem}.{token}.tmp{final.suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(
                errno.ENOENT, "nothing was written to the temporary path", str(tmp)
            )
        if tmp.is_dir():
            _replace_dir(tmp, final, token)
        else:
            _fsync(tmp)
            os.replace(tmp, final)
        _fsync(parent)
    except BaseException:
        remove_path(tmp)
        raise


def _replace_dir(tmp: Path, final: Path, token: str) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.parent / f".{final.name}.{token}.old"
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)  # put the previous version back
        raise
    remove_path(old)
