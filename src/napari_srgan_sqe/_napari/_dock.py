"""Docked widgets: their main window, a scroll area for their form, room in the dock area,
and their error notifications.

napari gives a newly docked widget only the height the docks above it leave over,
often a sliver; `claim_height` asks the main window to resize the widget's dock,
taking the height from docks of the same area that are taller than they need (never
below their minimum sizes). When the window is too short for every dock of a column,
`tabify_if_short` makes the widget a tab beside one of this plugin's other docks.
"""

from __future__ import annotations

import re

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

__all__ = [
    "brief",
    "claim_height",
    "dock_of",
    "fit_width",
    "main_window",
    "notify_error",
    "notify_warning",
    "scroll_contents",
    "tabify_if_short",
]

# an absolute path (POSIX, home or Windows) of two or more parts: its last part is kept
_PATH = re.compile(r"(?:[A-Za-z]:[\\/]|~?/)(?:[^\s:'\"\\/]+[\\/])+([^\s:'\"\\/]+)")


def brief(message: str) -> str:
    """`message` with every file path cut to its last part: a long folder would push
    the reason out of the notification (the widgets' status lines and logs keep the
    whole message)."""
    return _PATH.sub(r"\1", message)


def notify_error(message: str) -> None:
    """napari's error notification of `message`, its paths cut to file names, shown
    whole (`show_whole`)."""
    from napari.utils.notifications import show_error

    text = brief(message)
    show_error(text)
    show_whole(text)


def notify_warning(message: str) -> None:
    """napari's warning notification of `message`, like `notify_error`."""
    from napari.utils.notifications import show_warning

    text = brief(message)
    show_warning(text)
    show_whole(text)


def show_whole(text: str) -> bool:
    """Expand the newest toast showing `text` when its one line cuts it; True if it did.

    napari's toast opens collapsed to one line of about 300 px, elided: a longer
    message lost its end where the line wrapped ("paired mode needs an HR layer;"
    without "use self-supervised"), and only a double-click showed the rest. The toast
    is made at once when the notification is sent from the GUI thread, as the widgets
    send theirs; from another thread, or with no window shown, there is none to expand.
    """
    from qtpy.QtWidgets import QLabel

    try:  # napari's toast class: private, so a napari without it shows toasts as before
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:
        return False
    for toast in reversed(getattr(NapariQtNotification, "_instances", [])):
        label = getattr(toast, "message", None)
        if not isinstance(label, QLabel) or label.text() != text:
            continue
        shown = QLabel.text(label)  # the elided line on screen (text() is the whole)
        if shown == text or toast.property("expanded"):
            return False
        toast.expand()
        return True
    return False


def main_window(widget: QWidget) -> QMainWindow | None:
    """The main window `widget` is docked in (also when its dock floats), or None."""
    w: QWidget | None = widget
    while w is not None and not isinstance(w, QMainWindow):
        w = w.parentWidget()
    return w


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock widget holding `widget`, or None."""
    w: QWidget | None = widget
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


def claim_height(widget: QWidget, height: int, *, share: float = 1.0) -> bool:
    """Resize the dock of `widget` to `height` px (at most `share` of the main window's
    height), leaving the other docks of its area what they ask for (their size hints).
    False when it is not docked (or floats)."""
    dock, window = dock_of(widget), main_window(widget)
    if dock is None or window is None or dock.isFloating():
        return False
    tabs = window.tabifiedDockWidgets(dock)  # share its place: not resized apart
    others = [d for d in _area_docks(window, dock) if d not in tabs]
    needs = [_needed_height(d) for d in others]
    total = dock.height() + sum(d.height() for d in others)  # the area's height to share
    height = int(min(height, share * window.height(), max(total - sum(needs), 0)))
    height = max(height, dock.minimumSizeHint().height(), dock.height())
    window.resizeDocks([*others, dock], [*needs, height], Qt.Orientation.Vertical)
    return True


def tabify_if_short(widget: QWidget, height: int, prefer: tuple[type, ...]) -> bool:
    """When `height` px for `widget` and what the other docks of its area ask for do not
    fit the main window's height, make `widget`'s dock a tab of the dock that holds a
    widget of the first type in `prefer` found there, in front; True if it did.

    Three docks stacked in one column of a laptop screen leave each a sliver; napari
    docks a widget from the Plugins menu below the others, never as a tab.
    """
    dock, window = dock_of(widget), main_window(widget)
    if dock is None or window is None or dock.isFloating():
        return False
    others = _area_docks(window, dock)
    if height + sum(_needed_height(d) for d in others) <= window.height():
        return False
    for kind in prefer:
        for other in others:
            inner = other.widget()
            if inner is not None and (isinstance(inner, kind) or inner.findChild(kind)):
                window.tabifyDockWidget(other, dock)
                dock.show()
                dock.raise_()
                QTimer.singleShot(0, dock.raise_)  # the tab bar is made at the next layout
                return True
    return False


def _area_docks(window: QMainWindow, dock: QDockWidget) -> list[QDockWidget]:
    """The other docks shown in `dock`'s area of `window` (not floating)."""
    area = window.dockWidgetArea(dock)
    return [
        d
        for d in window.findChildren(QDockWidget)
        if d is not dock
        and d.isVisible()
        and not d.isFloating()
        and window.dockWidgetArea(d) == area
    ]


def _needed_height(dock: QDockWidget) -> int:
    """What a dock asks for: its size hint, or more for wrapped text at its width."""
    need = max(dock.sizeHint().height(), dock.minimumSizeHint().height())
    inner = dock.widget()
    if inner is not None and inner.hasHeightForWidth():
        chrome = dock.height() - inner.height()  # the title bar and margins
        need = max(need, inner.heightForWidth(inner.width()) + chrome)
    return need


def scroll_contents(widget: QWidget, content: QWidget) -> QScrollArea:
    """Put `content` in a vertical scroll area filling `widget`; returns the area.

    A dock shorter than its form (a small screen, several docks in one column) then
    scrolls instead of squeezing or clipping rows. Call `fit_width` once the style
    is known (on show): the area is then as wide as the contents need.
    """
    area = QScrollArea(widget)
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return area


def fit_width(area: QScrollArea) -> None:
    """Make a vertical scroll area as wide as its contents' minimum (no clipping)."""
    scroll_bar, content = area.verticalScrollBar(), area.widget()
    assert scroll_bar is not None and content is not None
    bar = scroll_bar.sizeHint().width()
    area.setMinimumWidth(content.minimumSizeHint().width() + bar)
