"""The command line's progress bars: tqdm, drawing each state once.

tqdm's `close()` draws the bar once more before its newline, so a bar that an update
had already drawn at 100 % showed "100 %" twice (in a log, or wherever the carriage
return does not overwrite it). `ProgressBar` skips that last drawing when the update
before it showed the same state (count, total, description and postfix; the rate and
the times are not part of the state).
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

__all__ = ["ProgressBar", "progress_bar"]


class ProgressBar(tqdm):
    """A tqdm bar whose `close()` does not draw again the state already on screen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._shown: tuple | None = None  # the state last drawn
        self._closing = False
        super().__init__(*args, **kwargs)

    def _state(self) -> tuple:
        return (self.n, self.total, self.desc, self.postfix)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # a message or a clearing: not the bar's state
            self._shown = None
            return bool(super().display(msg, pos))
        state = self._state()
        if self._closing and state == self._shown:
            return True  # on screen already: close() only ends the line
        self._shown = state
        return bool(super().display(msg, pos))

    def close(self) -> None:
        self._closing = True
        try:
            super().close()
        finally:
            self._closing = False


def progress_bar(**kwargs: Any) -> ProgressBar:
    """A progress bar on stderr that adapts to the terminal's width (`dynamic_ncols`);
    `kwargs` go to tqdm (total, unit, desc, delay ...)."""
    kwargs.setdefault("dynamic_ncols", True)
    return ProgressBar(**kwargs)
