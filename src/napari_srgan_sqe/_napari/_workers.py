"""The widgets' thread workers: started, tracked, and stopped when the viewer closes.

A napari (superqt) worker emits its signals from its own thread through a QObject
that belongs to the Python worker object. When the interpreter exits while a worker
still runs, PyQt's clean-up deletes that QObject; the worker's next emit then raises
"wrapped C/C++ object of type GeneratorWorkerSignals has been deleted" outside any
handler, and Qt aborts the process. So every worker of this plugin is started with
`start`, which keeps it in a registry until its thread is done:

- `stop(owner)` asks an owner's workers to end: the worker's own stop (e.g. the
  fine-tune stop event) and `worker.quit()`, which ends a generator worker at its
  next yield; workers still queued in the thread pool are taken out unrun.
- `stop_on_close(widget, callback)` calls `callback` once the viewer window holding
  `widget` has closed (not when a close was refused, nor on minimising).
- At interpreter exit (atexit, registered after PyQt's own clean-up so it runs
  before it), every tracked worker is stopped and waited for.

napari's own `napari.run()` also waits for workers when the application quits; this
covers scripts and notebooks that close the viewer without it.

`preload(module)` imports a heavy module in a background thread, once per process, so
that a worker's first use neither waits for the import nor stalls the GUI thread
in the middle of a run (importing holds Python's GIL in long stretches).
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, Qt, QThreadPool
from qtpy.QtWidgets import QWidget

from napari_srgan_sqe._napari._dock import main_window

__all__ = ["alive", "preload", "running", "start", "stop", "stop_all", "stop_on_close"]

EXIT_WAIT_S = 120.0
"""Longest wait at interpreter exit for workers that were asked to stop."""


class _Entry:
    """One tracked worker: its owner (weakly), its extra stop, and whether it ran / ended."""

    def __init__(self, worker: Any, owner: Any, stop: Callable[[], Any] | None) -> None:
        self.worker = worker
        self.owner = weakref.ref(owner) if owner is not None else None
        self.stop = stop
        self.started = threading.Event()
        self.done = threading.Event()

    def owned_by(self, owner: Any) -> bool:
        return owner is None or (self.owner is not None and self.owner() is owner)


_PRELOADS: dict[str, threading.Thread] = {}


def preload(module: str) -> threading.Thread | None:
    """Start importing `module` in a background thread (once per process); the thread,
    or None when the module was imported already. A failed import is left for the
    code that needs the module to report."""
    import importlib
    import sys

    with _LOCK:
        if module in _PRELOADS:
            return _PRELOADS[module]
        if module in sys.modules:
            return None

        def run() -> None:
            try:
                importlib.import_module(module)
            except Exception:  # the user of the module raises it with its context
                pass

        # not a daemon: an import cut off at interpreter exit can crash the process
        thread = threading.Thread(target=run, name=f"preload {module}", daemon=False)
        _PRELOADS[module] = thread
    thread.start()
    return thread


_LIVE: dict[int, _Entry] = {}
_LOCK = threading.Lock()
_exit_hook_installed = False


def start(worker: Any, *, owner: Any = None, stop: Callable[[], Any] | None = None) -> Any:
    """Start `worker` (made with `_start_thread=False`) and track it until its thread ends.

    `stop`: called (GUI thread) before `worker.quit()` when the worker must end early,
    for workers that check their own flag (a stop event) rather than only yielding.
    Returns the worker.
    """
    global _exit_hook_installed
    entry = _Entry(worker, owner, stop)
    direct = Qt.ConnectionType.DirectConnection  # runs in the worker's thread

    def ended(*_: Any) -> None:
        _forget(entry)

    worker.started.connect(lambda *_: entry.started.set(), type=direct)
    # `_finished` is superqt's last signal of a run; `finished` is the public one before it
    last = getattr(worker.signals, "_finished", None) or worker.finished
    last.connect(ended, type=direct)
    with _LOCK:
        _LIVE[id(worker)] = entry
    if not _exit_hook_installed:  # after PyQt's import, so it runs before PyQt's clean-up
        atexit.register(_at_exit)
        _exit_hook_installed = True
    worker.start()
    return worker


def running(owner: Any = None) -> list[Any]:
    """The tracked workers of `owner` (all if None) whose threads have not ended."""
    with _LOCK:
        return [e.worker for e in _LIVE.values() if e.owned_by(owner) and not e.done.is_set()]


def stop(owner: Any = None) -> list[Any]:
    """Ask the workers of `owner` (all if None) to end; returns those that ran.

    Workers still queued in the thread pool are removed from it and never run.
    Does not wait; `stop_all(wait_s=...)` does.
    """
    with _LOCK:
        entries = [e for e in _LIVE.values() if e.owned_by(owner)]
    pool = QThreadPool.globalInstance()
    ran = []
    for entry in entries:
        if entry.stop is not None:
            try:
                entry.stop()
            except Exception:  # noqa: BLE001 - stopping must go on for the others
                pass
        entry.worker.quit()
        if not entry.started.is_set() and _try_take(pool, entry.worker):
            _forget(entry)  # taken out of the queue: it will never run
            continue
        ran.append(entry)
    return [e.worker for e in ran]


def stop_all(owner: Any = None, *, wait_s: float = 0.0) -> bool:
    """`stop` the workers of `owner` (all if None) and wait up to `wait_s` for their threads.

    Workers that never started (queued behind a timer that will not fire again) are
    not waited for. Returns True when every started worker has ended.
    """
    stop(owner)
    with _LOCK:
        entries = [e for e in _LIVE.values() if e.owned_by(owner)]
    pool = QThreadPool.globalInstance()
    deadline = time.monotonic() + wait_s
    for entry in entries:
        if entry.done.is_set():
            continue
        if not entry.started.is_set():
            if _try_take(pool, entry.worker):
                _forget(entry)
                continue
            if not entry.started.wait(0.1):
                continue  # not handed to the pool yet: it will see the quit when it starts
        if not entry.done.wait(max(0.0, deadline - time.monotonic())):
            return False
    return True


def _forget(entry: _Entry) -> None:
    entry.done.set()
    with _LOCK:
        if _LIVE.get(id(entry.worker)) is entry:
            del _LIVE[id(entry.worker)]


def _try_take(pool: QThreadPool | None, worker: Any) -> bool:
    if pool is None:  # Qt's global pool is already gone (interpreter exit)
        return False
    try:
        return bool(pool.tryTake(worker))
    except (RuntimeError, TypeError):  # already deleted, or not a runnable of this pool
        return False


def _at_exit() -> None:
    stop_all(wait_s=EXIT_WAIT_S)


def alive(widget: QWidget) -> bool:
    """False once Qt has deleted the widget (its Python object may live on)."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


# ------------------------------------------------------------------ closing the viewer
class _CloseWatcher(QObject):
    """Event filter on a main window: a Close event followed by its Hide = the window closed."""

    def __init__(self, window: QWidget) -> None:
        super().__init__(window)
        self._closing = False
        self._callbacks: list[weakref.WeakMethod | Callable[[], Any]] = []

    def add(self, callback: Callable[[], Any]) -> None:
        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else callback
        self._callbacks.append(ref)

    def eventFilter(  # noqa: N802 - Qt override
        self, obj: QObject | None, event: QEvent | None
    ) -> bool:
        if event is None:
            return False
        kind = event.type()
        if kind == QEvent.Type.Close:
            self._closing = True  # the window may still refuse (a confirmation dialog)
        elif kind == QEvent.Type.Show:
            self._closing = False
        elif kind == QEvent.Type.Hide and self._closing and not event.spontaneous():
            self._closing = False
            self._fire()
        return False

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for ref in callbacks:
            fn = ref() if isinstance(ref, weakref.WeakMethod) else ref
            if fn is not None:
                try:
                    fn()
                except RuntimeError:  # the widget is already gone
                    pass


def stop_on_close(widget: QWidget, callback: Callable[[], Any]) -> bool:
    """Call `callback` once the main window that docks `widget` has closed.

    Call it when the widget is shown (it must be docked by then); calling again for
    the same widget and window does nothing. Returns False when there is no window yet.
    """
    window = main_window(widget)
    if window is None:
        return False
    watched = getattr(widget, "_close_watch", None)
    if watched is not None and watched() is window:
        return True
    watcher = window.findChild(_CloseWatcher, "srgan_sqe_close_watcher")
    if watcher is None:
        watcher = _CloseWatcher(window)
        watcher.setObjectName("srgan_sqe_close_watcher")
        window.installEventFilter(watcher)
    watcher.add(callback)
    widget._close_watch = weakref.ref(window)  # type: ignore[attr-defined]
    return True
