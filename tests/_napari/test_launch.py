"""`srgan-sqe view`: clear failures without a display or with a bad path; viewer set-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_srgan_sqe._napari.launch import NO_DISPLAY, dock_widgets, show_slide
from napari_srgan_sqe.io.slides import open_slide


def _view(*args: str, headless: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if headless:
        for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
            env.pop(name, None)
    code = "import sys; from napari_srgan_sqe.cli import main; r = main(); " + (
        "assert 'napari' not in sys.modules; sys.exit(r)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "view", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="display detection is for Linux")
def test_view_without_display_says_so() -> None:
    run = _view(headless=True)
    assert run.returncode == 2
    assert run.stderr.strip() == f"srgan-sqe view: error: {NO_DISPLAY}"


def test_view_with_bad_path_says_so(tmp_path: Path) -> None:
    run = _view(str(tmp_path / "missing.svs"), headless=False)
    assert run.returncode == 2
    assert "cannot read" in run.stderr and "no such file" in run.stderr


def test_show_slide_and_dock_widgets(make_napari_viewer, cmu_svs: Path) -> None:
    viewer = make_napari_viewer()
    layer = show_slide(viewer, open_slide(cmu_svs))
    assert layer.rgb and tuple(layer.scale) == pytest.approx((0.499, 0.499))
    docked = dock_widgets(viewer, names=("Compare", "No such widget"))
    assert set(docked) <= {"Compare"}  # a missing widget is logged, not raised


def test_scale_bar_shows_where_the_slide_has_a_pixel_size(make_napari_viewer, cmu_svs, tmp_path):
    from PIL import Image

    from napari_srgan_sqe._napari.launch import scale_bar_of, show_scale_bar

    viewer = make_napari_viewer()
    assert show_scale_bar(viewer, open_slide(cmu_svs))  # 0.499 um/px
    assert scale_bar_of(viewer).visible
    png = tmp_path / "tile.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png)
    other = make_napari_viewer()
    assert not show_scale_bar(other, open_slide(png))  # pixels only: a bar would mislead
    assert not scale_bar_of(other).visible


def test_view_starts_with_lr_simulated_as_a_scanner_stores_it(viewer, qtbot, errors) -> None:
    """`srgan-sqe view` on the sample: LR simulated with the scanner degradation by
    default (clean on request), and the model the widget pairs with that preset."""
    from napari_srgan_sqe._napari import _layers
    from napari_srgan_sqe._napari.launch import _start_enhance
    from napari_srgan_sqe.io.sample import sample_slide_path

    layer = show_slide(viewer, open_slide(sample_slide_path()))
    widget = dock_widgets(viewer, names=("Enhance",))["Enhance"]
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    _start_enhance(widget, layer, simulate_lr=True)
    qtbot.waitUntil(lambda: any(_layers.pyramid_of(x) for x in viewer.layers), timeout=60000)
    assert widget.simulate_preset == "scanner"
    sr = next(x for x in viewer.layers if _layers.pyramid_of(x))
    assert _layers.pyramid_of(sr).model.name == "srgan-sqe-he-x4"
    assert _layers.find_pair(viewer.layers, sr).lr.name.startswith("LR simulated 4x, scanner")
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    _start_enhance(widget, layer, simulate_lr=True, degradation="clean")
    qtbot.waitUntil(lambda: _layers.pyramid_of(sr).model.name == "srgan-sqe-he-x4-clean",
                    timeout=60000)  # fmt: skip
    assert widget.simulate_preset == "clean"
    assert errors() == []
