"""`srgan-sqe view`: napari with a slide (default: the bundled sample) and the widgets docked.

napari is imported only after the slide has opened and a display was found, so a
bad path or a headless machine gives one clear line instead of a Qt abort.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from napari_srgan_sqe.errors import UserFacingError

__all__ = [
    "NO_DISPLAY",
    "NoDisplayError",
    "check_display",
    "dock_widgets",
    "launch_viewer",
    "show_slide",
]

log = logging.getLogger(__name__)

PLUGIN = "napari-srgan-sqe"
WIDGETS = ("Enhance", "Compare")
NO_DISPLAY = "no display: run under a desktop session or `xvfb-run -a srgan-sqe view`"


class NoDisplayError(UserFacingError, RuntimeError):
    """No graphical display to open napari on."""


def check_display() -> None:
    """Raise `NoDisplayError` on Linux without X11 / Wayland and no Qt platform chosen."""
    if not sys.platform.startswith("linux"):
        return
    if any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")):
        return
    raise NoDisplayError(NO_DISPLAY)


def show_slide(viewer: Any, slide: Any) -> Any:
    """Add a `Slide` to `viewer` as the reader would; return the layer."""
    from napari_srgan_sqe._napari.reader import slide_layer_data

    data, meta, _ = slide_layer_data(slide)[0]
    return viewer.add_image(data, **meta)


def scale_bar_of(viewer: Any) -> Any:
    """napari's scale bar overlay: `viewer.canvas.overlays["scale_bar"]` (napari >= 0.9),
    else the older `viewer.scale_bar`."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    if overlays is not None and "scale_bar" in overlays:
        return overlays["scale_bar"]
    return viewer.scale_bar


def show_scale_bar(viewer: Any, slide: Any) -> bool:
    """Switch napari's scale bar on (with a box, bottom right) when the slide records
    its pixel size, so the layers' physical units show; return whether it did."""
    if not slide.mpp:
        return False
    bar = scale_bar_of(viewer)
    bar.visible = True
    bar.box = True  # the layers carry units "um" (reader): the bar reads um
    return True


def dock_widgets(viewer: Any, names: tuple[str, ...] = WIDGETS) -> dict[str, Any]:
    """Dock this plugin's widgets by display name; a missing one is logged, not fatal."""
    docked = {}
    for name in names:
        try:
            _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        except Exception as exc:  # a widget that fails to build must not stop the viewer
            log.warning("could not dock the %r widget: %s", name, exc)
            continue
        docked[name] = widget
    return docked


def _start_enhance(
    widget: Any, layer: Any, *, simulate_lr: bool, degradation: str = "scanner"
) -> None:
    try:
        if simulate_lr:
            widget.enhance(simulate_from=layer, degradation=degradation)
        else:
            widget.enhance(layer)
    except Exception as exc:
        log.warning("could not start enhancing %r: %s", layer.name, exc)


def launch_viewer(
    path: Any = None,
    *,
    simulate_lr: bool | None = None,
    enhance: bool = True,
    degradation: str = "scanner",
) -> int:
    """Open napari with the slide at `path` (default: the sample) and run it; return 0.

    `path` may also be a `Slide` already opened (e.g. to print its coding first).

    `simulate_lr`: treat the slide as HR and super-resolve LR simulated from it (so
    the Compare widget can measure against HR); by default on for the sample, so
    the LR | SR | HR comparison is there on first sight, and off for a user's slide.
    `degradation`: how that LR is simulated: 'scanner' (as a scanner stores a slide:
    blur, noise, JPEG / JPEG 2000; the default) or 'clean' (the reference D_s).
    `enhance`: start the lazy SR layer at once with the default model (the Enhance
    widget's: chosen by the slide's coding, or by the simulated degradation). Raises
    `SlideError` for an unreadable slide and `NoDisplayError` without a display, both
    before napari is imported. napari's asynchronous slicing is switched on (unless
    the user set NAPARI_ASYNC), so SR tiles never block the GUI thread.
    """
    from napari_srgan_sqe.io.sample import sample_slide_path
    from napari_srgan_sqe.io.slides import open_slide

    if simulate_lr is None:
        simulate_lr = path is None
    if hasattr(path, "levels"):  # a Slide
        slide = path
    else:
        slide = open_slide(path if path is not None else sample_slide_path())
    check_display()
    os.environ.setdefault("NAPARI_ASYNC", "1")
    import napari

    viewer = napari.Viewer(title=f"napari-srgan-sqe: {slide.path.name}")
    layer = show_slide(viewer, slide)
    show_scale_bar(viewer, slide)
    widgets = dock_widgets(viewer)
    if enhance and "Enhance" in widgets:
        _start_enhance(widgets["Enhance"], layer, simulate_lr=simulate_lr, degradation=degradation)
    try:
        napari.run()
    finally:
        _close(viewer)
    return 0


def _close(viewer: Any) -> None:
    """After the window closed: stop the viewer's slicing and the widgets' workers.

    Closing the window leaves napari's slicing thread computing SR tiles for a
    viewer that is gone; `viewer.close()` waits for the tile being computed and
    cancels the rest, so the process does not end with tracebacks from threads
    that outlive the interpreter.
    """
    from napari_srgan_sqe._napari import _workers

    try:
        viewer.close()
    except Exception as exc:  # noqa: BLE001 - already closed (napari version specific)
        log.debug("closing the viewer: %s", exc)
    _workers.stop_all(wait_s=_workers.EXIT_WAIT_S)
