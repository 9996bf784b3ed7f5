"""Errors about the user's data, shared by training and inference (which may not
import each other). The command line prints them as one line, without a traceback."""

from __future__ import annotations

__all__ = ["DataError", "RegionError"]


class DataError(ValueError):
    """Input that cannot be used (images, shapes, dtypes, scales), with the reason in words."""


class RegionError(DataError):
    """A region that cannot be used: empty, outside the image, or too small."""
