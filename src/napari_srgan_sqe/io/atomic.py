"""Write files and directories atomically: a temporary sibling, renamed on success.

A reader (or a user) never sees a half-written export or checkpoint under its final
name: an interrupted or failed write leaves the previous file (if any) untouched and
removes the temporary one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "file_lock",
    "probe_writable",
    "remove_path",
    "remove_stale_temporaries",
]

log = logging.getLogger(__name__)


def probe_writable(folder: Path) -> None:
    """Create and remove a hidden file in `folder`: an OSError (read-only, full, no
    permission) says before any work that outputs cannot be written there."""
    import tempfile

    fd, probe = tempfile.mkstemp(prefix=".srgan-sqe-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


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


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove what an `atomic_path(path)` killed mid-write left: its hidden temporary
    siblings, and a previous version set aside by a directory swap when `path` exists.

    Only safe while no live process writes `path`: call it holding `file_lock` on it.
    Returns the paths removed.
    """
    final = Path(path)
    if not final.parent.is_dir():
        return []
    tmp = re.compile(rf"\.{re.escape(final.stem)}\.[0-9a-f]{{8}}\.tmp{re.escape(final.suffix)}")
    old = re.compile(rf"\.{re.escape(final.name)}\.[0-9a-f]{{8}}\.old")
    removed = []
    for entry in final.parent.iterdir():
        if tmp.fullmatch(entry.name) or (final.exists() and old.fullmatch(entry.name)):
            remove_path(entry)
            removed.append(entry)
    if removed:
        log.info("removed what an interrupted write of %s left: %s", final, removed)
    return removed


_HELD: dict[str, list[int]] = {}  # lock file -> [owning thread id, depth]
_HELD_GUARD = threading.Lock()
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextlib.contextmanager
def file_lock(lock: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive OS lock on the file `lock` (created, and removed on release).

    Raises `BlockingIOError` at once when another process, or another thread of this
    one, holds it; the thread holding it may take it again (nested). The lock is
    `fcntl.flock`, which the OS releases when the holder dies, so a killed process
    never leaves a stale lock (a leftover lock file is just reused). On file systems
    without flock support, and on Windows, nothing is locked (a warning is logged).
    """
    lock = Path(lock)
    key = str(lock.parent.resolve() / lock.name)
    me = threading.get_ident()
    with _HELD_GUARD:
        entry = _HELD.get(key)
        if entry is not None and entry[0] != me:
            raise BlockingIOError(errno.EWOULDBLOCK, "held by another thread of this process", key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:  # nested in this thread
        try:
            yield lock
        finally:
            with _HELD_GUARD:
                entry[1] -= 1
        return
    fd = _acquire(lock)
    with _HELD_GUARD:
        _HELD[key] = [me, 1]
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                lock.unlink()  # still holding it: a waiter retries on a new file
            os.close(fd)


def _acquire(lock: Path) -> int | None:
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt.locking cannot lock a file we then unlink
        log.warning("%s: output locking is not supported on this system", lock)
        return None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BlockingIOError(
                    errno.EWOULDBLOCK, "locked by another process", str(lock)
                ) from None
            if exc.errno in _NO_LOCKING:
                log.warning("%s: the file system does not support locking (%s)", lock, exc)
                with contextlib.suppress(OSError):
                    lock.unlink()
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the holder removed this file as we locked it: lock the new one
