"""Errors about the user's data, shared by training and inference (which may not
import each other). The command line prints them as one line, without a traceback."""

from __future__ import annotations

from typing import Any

from napari_srgan_sqe.errors import UserFacingError

__all__ = ["DataError", "RegionError", "check_unit_range"]

UNIT_TOLERANCE = 1e-3
"""How far float pixels may stray outside [0, 1] (rounding) before they are refused."""


class DataError(UserFacingError, ValueError):
    """Input that cannot be used (images, shapes, dtypes, scales), with the reason in words."""


class RegionError(DataError):
    """A region that cannot be used: empty, outside the image, or too small."""


def check_unit_range(values: Any, what: str = "image") -> None:
    """DataError unless float pixel `values` are finite and within [0, 1] (give or take
    `UNIT_TOLERANCE`): 8-bit values stored as float (0-255) would come out white, and
    NaN as black, without a word."""
    import numpy as np

    a = np.asarray(values)
    if a.size == 0:
        return
    lo, hi = float(np.min(a)), float(np.max(a))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"{what} holds NaN or infinite values; float pixels must lie in [0, 1]")
    if lo < -UNIT_TOLERANCE or hi > 1.0 + UNIT_TOLERANCE:
        hint = " (8-bit values stored as float? divide by 255)" if hi > 1.5 else ""
        raise DataError(
            f"{what} has float values from {lo:g} to {hi:g}; float pixels must lie in [0, 1]{hint}"
        )
