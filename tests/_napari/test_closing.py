"""Closing the viewer while the widgets' workers run ends the process cleanly.

Each case runs napari in a subprocess (under the test session's X display): the
failure it guards against is the process aborting at exit ("wrapped C/C++ object of
type GeneratorWorkerSignals has been deleted", then Aborted), which no in-process
test can observe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SCRIPT = r"""
import sys, tempfile, time
import numpy as np
import napari
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication
from napari_srgan_sqe import open_slide
from napari_srgan_sqe._napari import _workers

how, sample, model = sys.argv[1], sys.argv[2], sys.argv[3]
hr_image = np.asarray(open_slide(sample).levels[0][600:1112, 600:1112])
viewer = napari.Viewer(show=True)
hr = viewer.add_image(hr_image, name="HE")
_, enhance = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Enhance")
_, compare = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Compare")
_, finetune = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Fine-tune")
assert enhance.enhance(simulate_from=hr, model=model, device="cpu", wait=True) is not None
finetune.folder = tempfile.mkdtemp()
finetune.extra_config = {"patch_size": 32, "batch_size": 2, "val_every": 4, "seed": 0}
finetune.steps_box.setValue(100_000)
finetune.shapes_layer().add_rectangles(np.array([[32.0, 16.0], [480.0, 480.0]]))


def busy():
    # training (runs until stopped), a readout, and a model load queued behind them
    assert finetune.start()
    compare._timer.stop()
    compare._start_readout()
    enhance.set_model(model)
    enhance.set_model("bicubic-x4")
    time.sleep(0.3)
    print("running workers:", len(_workers.running()), flush=True)


def pump(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


if how == "script":  # a script (or notebook) that closes the viewer, then ends
    pump(0.5)
    busy()
    viewer.close()
    print("closed", flush=True)
else:  # the user closes the window of `napari.run()`
    def close():
        busy()
        viewer.window._qt_window.close()
        print("closed", flush=True)

    QTimer.singleShot(500, close)
    napari.run()
print("end of script", flush=True)
"""


@pytest.mark.parametrize("how", ["script", "window"])
def test_closing_while_workers_run_exits_cleanly(how, sample_path: Path, tiny_model: Path):
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, how, str(sample_path), str(tiny_model)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout + run.stderr
    running = [line for line in run.stdout.splitlines() if line.startswith("running workers:")]
    # work was going on: the training at least (it runs until stopped); the readout may
    # already have finished on a fast machine
    assert running and int(running[0].split(":")[1]) >= 1, out
    assert "closed" in run.stdout and "end of script" in run.stdout, out
    assert run.returncode == 0, out
    assert "has been deleted" not in out and "Aborted" not in out, out
    assert "Traceback" not in out, out


VIEW = r"""
import napari
from qtpy.QtCore import QTimer
from napari_srgan_sqe._napari import launch

run = napari.run


def run_then_close(*args, **kwargs):  # the user closes the window while tiles compute
    def close():
        busy = [x for x in napari.current_viewer().layers if x.name.startswith("SR ")]
        print("SR layer shown:", bool(busy), flush=True)
        napari.current_viewer().window._qt_window.close()

    QTimer.singleShot(6000, close)
    return run(*args, **kwargs)


napari.run = run_then_close
print("exit code", launch.launch_viewer(), flush=True)
"""


def test_closing_srgan_sqe_view_while_tiles_compute_is_quiet():
    """`srgan-sqe view` (async slicing, SR tiles of the sample being computed): closing
    the window ends without tracebacks from napari's slicing thread."""
    run = subprocess.run([sys.executable, "-c", VIEW], capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert "SR layer shown: True" in run.stdout and "exit code 0" in run.stdout, out
    assert run.returncode == 0 and "Traceback" not in out and "Aborted" not in out, out


SLOW = r"""
import sys, time
import numpy as np
import napari
import torch
from qtpy.QtWidgets import QApplication
from napari_srgan_sqe import open_slide
from napari_srgan_sqe.config import ModelConfig, SR3Config
from napari_srgan_sqe.models.modelfile import new_model

sample = sys.argv[1]
model = new_model(  # a stochastic model whose view pieces take minutes: 300 steps each
    ModelConfig(name="slow-sr3", variant="sr3",
                generator=SR3Config(channels=8, mults=(1, 2), blocks=1, steps=300))
)
lr = np.asarray(open_slide(sample).levels[0][600:1112, 600:1112])
viewer = napari.Viewer(show=True)
layer = viewer.add_image(lr, name="LR")
_, enhance = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Enhance")
sr = enhance.enhance(layer, model=model, device="cpu", wait=True)
viewer.camera.zoom = 4  # level 0 in view: its pieces are sampled in the background
from napari_srgan_sqe.inference.background import _WORKERS as _LIVE
end = time.monotonic() + 120
while time.monotonic() < end and not any(live.busy for live in _LIVE):
    QApplication.processEvents()
    time.sleep(0.01)
for _ in range(100):  # let the piece get into its sampling steps
    QApplication.processEvents()
    time.sleep(0.01)
print("pieces running:", sum(live.busy for live in _LIVE), flush=True)
viewer.close()
print("closed", time.monotonic(), flush=True)
"""


def test_exit_while_a_slow_stochastic_model_samples_is_prompt_and_clean(sample_path: Path):
    """Exiting while SR3 samples a view piece stops it between sampling steps: the
    process ends at once with status 0 (a thread left inside torch would abort it)."""
    import time

    run = subprocess.run(
        [sys.executable, "-c", SLOW, str(sample_path)],
        env=dict(os.environ, PYTHONFAULTHANDLER="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout + run.stderr
    assert "pieces running: 1" in run.stdout, out
    closed_at = float(run.stdout.split("closed ")[1].split()[0])
    assert run.returncode == 0 and "Aborted" not in out and "Traceback" not in out, out
    assert "failed" not in out, out  # the stopped piece is not reported as a failure
    # CLOCK_MONOTONIC is system-wide on Linux: the exit took seconds, not the piece's minutes
    assert time.monotonic() - closed_at < 20, out


def test_preload_imports_once_in_the_background_and_exit_waits_for_it(tmp_path: Path):
    """`_workers.preload`: the import runs in its own thread (the caller returns at
    once), a second call gets the same thread, a failing import raises nowhere, and a
    process that exits during a preload ends cleanly with the import complete."""
    (tmp_path / "slow_module_for_preload.py").write_text(
        "import time\ntime.sleep(0.5)\nREADY = True\n"
    )
    (tmp_path / "broken_module_for_preload.py").write_text("raise RuntimeError('no')\n")
    script = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from napari_srgan_sqe._napari import _workers
t0 = time.perf_counter()
thread = _workers.preload("slow_module_for_preload")
returned_s = time.perf_counter() - t0
assert thread is not None and thread.is_alive() and returned_s < 0.3, returned_s
assert _workers.preload("slow_module_for_preload") is thread
bad = _workers.preload("broken_module_for_preload")
bad.join(10)
assert "broken_module_for_preload" not in sys.modules
assert _workers.preload("time") is None  # imported already: nothing to do
print("started", flush=True)
# exit now, while the slow import runs: the interpreter waits for it
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script + "\nimport atexit\n"
         "atexit.register(lambda: print('ready', 'slow_module_for_preload' in sys.modules "
         "and getattr(sys.modules['slow_module_for_preload'], 'READY', False), flush=True))\n",
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["started", "ready", "True"], done.stdout + done.stderr
