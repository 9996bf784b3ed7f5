"""The Fine-tune widget's "Adapt to this slide": refusals, start, progress, stop, and
the SR layer switching to the adapted (unpaired) model, in a real napari viewer."""

from __future__ import annotations

import pytest

from napari_srgan_sqe.models.modelfile import load_model

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]

PLUGIN = "napari-srgan-sqe"
TINY_ADAPT = {
    "batch_size": 2,
    "patch_size": 32,
    "correction_layers": 3,
    "correction_channels": 16,
    "val_every": 3,
}


@pytest.fixture
def adapt_widget(make_napari_viewer, tiny_model, sample_hr, tmp_path, monkeypatch):
    """A shown viewer with HR, simulated LR (128 x 96 px) and SR (tiny model) layers,
    and the Fine-tune widget saving into tmp_path with tiny adaptation settings."""
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
    viewer = make_napari_viewer(show=True)
    _, enhance = viewer.window.add_plugin_dock_widget(PLUGIN, "Enhance")
    hr = viewer.add_image(sample_hr, name="HR")  # 384 x 512
    sr = enhance.enhance(
        simulate_from=hr, degradation="clean", model=str(tiny_model), device="cpu", wait=True
    )
    assert sr is not None
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    widget.folder = tmp_path
    widget.steps_box.setValue(2000)
    widget.adapt_config = dict(TINY_ADAPT)
    viewer.reset_view()  # the whole LR in view
    return viewer, widget, sr


def test_adapt_to_this_slide_reports_progress_stops_and_switches_the_sr_layer(
    adapt_widget, qtbot, tmp_path, errors
):
    from napari_srgan_sqe._napari import _layers

    viewer, widget, sr = adapt_widget
    assert widget.adapt_button.text() == "Adapt to this slide"
    assert widget.adapt_button.parent() is widget.zero_shot_button.parent()
    old = _layers.pyramid_of(sr).model
    done: list = []
    widget.finished.connect(done.append)
    assert widget.start_adapt()
    assert widget.running and not widget.adapt_button.isEnabled()
    assert not widget.zero_shot_button.isEnabled() and not widget.start_button.isEnabled()
    assert sr.metadata["srgan_sqe"]["busy"] is True
    assert "adapting 'tiny-test'" in widget.log.toPlainText()
    # progress: the clean check at step 0, 3, 6, the loss curve, the ETA, the status
    qtbot.waitUntil(lambda: len(widget.plot.psnr) >= 3, timeout=120_000)
    assert len(widget.plot.loss) >= 6 and "ETA" in widget.eta_label.text()
    assert "clean check" in widget.status.text()
    with qtbot.waitSignal(widget.finished, timeout=20_000):
        widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=10_000)
    result = done[0]
    assert result.stopped and result.improved and result.mode == "unpaired"
    assert 6 <= result.steps_done < 2000

    new = _layers.pyramid_of(sr).model
    assert new is result.model and new is not old and new.arch == "unpaired"
    assert new.metadata["parent"] == "tiny-test"
    saved = sorted(tmp_path.glob("tiny-test-adapt-*.safetensors"))
    assert len(saved) == 1 and saved[0].stem == new.name
    loaded = load_model(saved[0])
    assert loaded.arch == "unpaired" and loaded.identity == new.identity
    assert new.name in sr.name and not sr.metadata["srgan_sqe"].get("busy")
    log = widget.log.toPlainText()
    assert "clean check" in log and f"saved {saved[0].name}" in log
    assert "now used by the SR layer" in widget.result_label.text()
    assert widget.adapt_button.isEnabled() and widget.zero_shot_button.isEnabled()
    assert not errors()


def test_adapt_is_refused_with_a_reason(adapt_widget, qtbot, errors):
    viewer, widget, _ = adapt_widget
    viewer.camera.zoom = viewer.camera.zoom * 16  # the view: a few LR px, less than a patch
    assert not widget.start_adapt()
    assert errors() and "smaller than a patch" in errors()[-1]
    assert "cannot adapt" in widget.log.toPlainText() and not widget.running
    widget.adapt_config = {"patch_size": 32, "no_such_setting": 1}
    viewer.reset_view()
    assert not widget.start_adapt()
    assert "no_such_setting" in errors()[-1]
    assert widget.adapt_button.isEnabled()


def test_an_adaptation_that_does_not_help_keeps_the_model_and_says_why(
    adapt_widget, qtbot, tmp_path, errors
):
    """A learning rate far too high wrecks the correction: its clean check falls, the
    result is rejected, the SR layer keeps its model, nothing is saved, and the log and
    the result line say so."""
    from napari_srgan_sqe._napari import _layers

    viewer, widget, sr = adapt_widget
    old = _layers.pyramid_of(sr).model
    name_before = sr.name
    widget.steps_box.setValue(6)
    widget.adapt_config = {**TINY_ADAPT, "lr": 0.5}
    done: list = []
    widget.finished.connect(done.append)
    with qtbot.waitSignal(widget.finished, timeout=120_000):
        assert widget.start_adapt()
    qtbot.waitUntil(lambda: not widget.running, timeout=10_000)
    result = done[0]
    assert not result.improved and result.steps_done == 6 and result.model is old
    assert result.after == result.before
    assert _layers.pyramid_of(sr).model is old and sr.name == name_before
    assert not list(tmp_path.glob("*.safetensors"))
    for text in (widget.result_label.text(), widget.log.toPlainText()):
        assert "rejected: the clean check fell" in text and "kept the original model" in text
    assert widget.status.text() == "done (not improved)"
    assert widget.adapt_button.isEnabled() and not errors()
