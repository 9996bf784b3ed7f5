"""Make the user guide's screenshots with real napari renders of the bundled sample.

    python docs/make_screenshots.py              # starts a virtual X display if needed
    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/make_screenshots.py

Writes docs/images/enhance.png, docs/images/compare.png (a 1600 x 980 window) and
docs/images/finetune-widget.png (the Fine-tune widget after a short paired run): LR
simulated from the sample with the scanner degradation, and the model for scanned
slides. `--sr3` instead writes docs/images/sr3-uncertainty.png: the same view with
`sr3-he-x4` side by side and its Uncertainty map of 4 samples; `--departure` writes
docs/images/departure.png: the overlay of SR and its "where SR departs from the scan"
map, legend in view. Uses the bundled trained
model when its weights are installed, otherwise the
bicubic model (then SR and the bicubic baseline agree, the gain column is about zero,
and there is nothing to fine-tune). Re-run after training.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "images"
WINDOW = (1600, 980)  # a usual laptop screen
CENTRE_HR_PX = (2030, 1180)  # (y, x): epidermis and a small vessel in CMU-1-Small-Region
VIEW_HR_PX = 420  # HR pixels across one grid cell


def _display() -> object | None:
    """A virtual display when none is set (Linux without X)."""
    if os.environ.get("DISPLAY") or not sys.platform.startswith("linux"):
        return None
    from pyvirtualdisplay import Display

    return Display(size=(1920, 1200), color_depth=24).start()


def _wait(condition, timeout: float = 120.0) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("napari did not settle in time")


def _settle(seconds: float = 1.0) -> None:
    end = time.monotonic() + seconds
    _wait(lambda: time.monotonic() > end, timeout=seconds + 1)


def _enhanced_sample(model: str, *, set_simulate: bool = False, **kw) -> tuple:
    """A napari window (`WINDOW`) showing the bundled sample as HR, LR simulated from it
    with the scanner degradation and SR of `model` (Enhance's `kw`: e.g. seed); returns
    (viewer, HR layer, SR layer, HR um/px). `set_simulate`: Enhance's box shows it too."""
    import napari

    from napari_srgan_sqe._napari.launch import show_slide
    from napari_srgan_sqe.io.sample import sample_slide_path
    from napari_srgan_sqe.io.slides import open_slide

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(title="napari-srgan-sqe")
    viewer.window.resize(*WINDOW)
    hr = show_slide(viewer, open_slide(sample_slide_path()))
    _, enhance = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Enhance")
    _wait(lambda: not enhance.busy)  # models listed, auto device known
    if set_simulate:
        enhance.set_simulate("scanner")
    sr = enhance.enhance(simulate_from=hr, degradation="scanner", model=model, wait=True, **kw)
    if sr is None:
        raise SystemExit("enhancing the sample failed; see the notification above")
    return viewer, hr, sr, float(hr.scale[-1])


def _sr_complete(sr) -> None:
    """Wait until the SR layer's view is computed SR everywhere (no placeholder left
    under the camera), then let napari draw it: a picture must not show a guess."""
    from napari_srgan_sqe._napari._layers import pyramid_of

    _settle(1.0)
    live = getattr(pyramid_of(sr), "live", None)
    if live is not None:
        _wait(lambda: not live.busy, timeout=600)
    _settle(2.0)


def _shoot(viewer, name: str) -> None:
    """The whole window (canvas and docked widgets) to docs/images/<name>."""
    viewer.screenshot(str(OUT / name), canvas_only=False)
    print(f"wrote {OUT / name}")


def _close(viewer, display) -> int:
    viewer.close()
    if display is not None:
        display.stop()
    return 0


def _aim(viewer, mpp: float, *, grid: bool) -> None:
    """Centre the camera on `CENTRE_HR_PX`, `VIEW_HR_PX` HR px across one grid cell
    (`grid`: side by side) or `2 * VIEW_HR_PX` across the canvas."""
    camera = viewer.scene.camera
    camera.center = (CENTRE_HR_PX[0] * mpp, CENTRE_HR_PX[1] * mpp)
    if grid:
        camera.zoom = viewer.canvas.viewbox_size(viewer.layers)[1] / (VIEW_HR_PX * mpp)
    else:
        camera.zoom = viewer.canvas.size[1] / (2 * VIEW_HR_PX * mpp)


def sr3_uncertainty() -> int:
    """LR | SR3 (seed 0) | its Uncertainty of 4 samples | HR, side by side."""
    display = _display()
    viewer, _, _, mpp = _enhanced_sample("sr3-he-x4", seed=0)
    _, compare = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Compare")
    compare.arrange("side by side")
    _aim(viewer, mpp, grid=True)
    _wait(lambda: compare.last_readout is not None and not compare.busy, timeout=600)
    compare.run_uncertainty(samples=4)
    _wait(lambda: compare.last_spread is not None and not compare.uncertainty_running, 900)
    _wait(lambda: not compare.busy, timeout=600)
    _settle(3.0)
    _shoot(viewer, "sr3-uncertainty.png")
    return _close(viewer, display)


def departure() -> int:
    """SR in overlay under its departure map, the Compare widget's legend in view."""
    display = _display()
    from napari_srgan_sqe._napari.enhance_widget import default_model_name

    viewer, _, _, mpp = _enhanced_sample(default_model_name(preset="scanner"))
    _, compare = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Compare")
    compare.arrange("overlay")
    layer = compare.show_departure()
    _aim(viewer, mpp, grid=False)
    live = compare.departure_of(layer)
    _settle(2.0)
    _wait(lambda: not live.busy and not compare.busy, timeout=600)
    _settle(3.0)
    _shoot(viewer, "departure.png")
    return _close(viewer, display)


def main() -> int:
    if "--sr3" in sys.argv[1:]:
        return sr3_uncertainty()
    if "--departure" in sys.argv[1:]:
        return departure()
    display = _display()
    from napari_srgan_sqe._napari.enhance_widget import default_model_name

    # LR simulated as a scanner stores it (blur, noise, JPEG / JPEG 2000; seed 0), and
    # the model for such input, as the widget chooses it.
    model = default_model_name(preset="scanner")
    print(f"model: {model}")
    viewer, hr, sr, mpp = _enhanced_sample(model, set_simulate=True)
    for layer in viewer.layers:
        layer.visible = layer == sr
    _aim(viewer, mpp, grid=False)
    _sr_complete(sr)
    _shoot(viewer, "enhance.png")

    for layer in viewer.layers:
        layer.visible = True
    _, compare = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Compare")
    compare.arrange("side by side")
    _aim(viewer, mpp, grid=True)
    _wait(lambda: compare.last_readout is not None and not compare.busy)
    _sr_complete(sr)
    _shoot(viewer, "compare.png")

    if model != "bicubic-x4":
        _finetune(viewer, hr, mpp)
    return _close(viewer, display)


def _finetune(viewer: object, hr: object, mpp: float) -> None:
    """A short paired fine-tune on one region; a picture of the widget after it."""
    import tempfile

    import numpy as np

    _, finetune = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Fine-tune")
    finetune.folder = Path(tempfile.mkdtemp(prefix="srgan-sqe-screenshots-"))
    finetune.extra_config = {"patch_size": 48, "batch_size": 2, "val_every": 10, "seed": 0}
    finetune.steps_box.setValue(40)
    finetune.lr_box.setValue(1e-4)
    finetune.draw_mode()
    (y, x), half = CENTRE_HR_PX, 300
    corners = np.array([[y - half, x - half], [y + half, x + half]], dtype=float) * mpp
    finetune.shapes_layer().add_rectangles(corners)
    if not finetune.start():
        raise SystemExit("fine-tuning could not start; see the notification above")
    _wait(lambda: not finetune.running, timeout=900)
    _settle(1.0)
    # the status line, the result and the plot at the top of the widget's view
    finetune.scroll_area.verticalScrollBar().setValue(finetune.status.y() - 4)
    _settle(0.5)
    finetune.grab().save(str(OUT / "finetune-widget.png"))
    print(f"wrote {OUT / 'finetune-widget.png'}")


if __name__ == "__main__":
    raise SystemExit(main())
