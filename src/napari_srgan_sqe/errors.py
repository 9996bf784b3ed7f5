"""The base of every error a user can cause and fix: a file that cannot be read, a
config or option out of range, a region outside the image, a device that is not
there, a model file that is not one.

`UserFacingError` carries a message meant for people (what is wrong, with which file
or value, and what to do). The command line prints it as one line and exits with
status 2; the widgets show it as a notification. Any other exception is a bug and
keeps its traceback. Each module's own error class derives from it (and from the
built-in class it always was, e.g. ValueError, so existing `except` clauses hold).
This module imports nothing, so every layer can use it.
"""

from __future__ import annotations

__all__ = ["UserFacingError"]


class UserFacingError(Exception):
    """An error caused by the input, the settings or the machine, with a message that
    says what to change."""
