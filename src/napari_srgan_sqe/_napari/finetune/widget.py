"""The "Fine-tune" widget: adapt the SR layer's model to rectangles drawn on the slide.

The widget only arranges layers and watches events. Reading the regions, training,
saving the new version and switching the SR pyramid to it all run in
`training.jobs.finetune_job` (the same jobs as `srgan-sqe finetune` and `zero-shot`),
a generator in a napari thread worker that yields typed events; the GUI thread turns
them into the progress bar, the plot (`curve.CurvePlot`), the labels and, at the end,
`show_pyramid` on the SR layer. The settings form is `settings.SettingsForm`. Nothing
here imports torch.

"Adapt to this slide" runs in the same worker: a correction net in front of the SR
layer's model learns, without HR, to turn this slide's LR (the drawn rectangles, or
the part in view) into the clean LR the model was trained on
(`training.adapt.iter_adapt`, the 'unpaired' recipe).

Versions go to `models_dir()` (`$NAPARI_SRGAN_SQE_MODELS`, default
`~/.napari-srgan-sqe/models/`) as `<parent>-ft-<YYYYmmdd-HHMMSS>.safetensors`
(`<parent>-adapt-...` for an adapted model), with the parent model and the regions in
the file's metadata.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_srgan_sqe._napari import _dock, _layers, _workers
from napari_srgan_sqe._napari.finetune import plans
from napari_srgan_sqe._napari.finetune.curve import CurvePlot
from napari_srgan_sqe._napari.finetune.regions import RegionsLayer, view_region
from napari_srgan_sqe._napari.finetune.report import (
    TIPS,
    before_text,
    best_text,
    fmt_s,
    outcome_text,
)
from napari_srgan_sqe._napari.finetune.settings import SettingsForm
from napari_srgan_sqe.training.jobs import (
    Failed,
    Saved,
    finetune_job,
    models_dir,
)

if TYPE_CHECKING:
    from napari_srgan_sqe.training.jobs import JobKind

__all__ = ["FinetuneWidget"]

OPTIMIZER_IMPORTS = "torch._dynamo"
"""What torch's optimizers import at their first step (some 800 modules): preloaded in
the background when the widget opens."""


class _Job:
    """A running fine-tune: its stop event and worker (outlives the widget if need be)."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.worker: Any = None

    def shutdown(self, *_: Any) -> None:
        """Stop training (within one step) and ask the worker to quit."""
        self.stop_event.set()
        if self.worker is not None:
            self.worker.quit()


class FinetuneWidget(QWidget):
    """Draw rectangles, pick a mode and settings, Start / Stop; the SR layer switches."""

    finished = Signal(object)
    """Emitted on the GUI thread with the FinetuneResult once the layers are updated."""

    def __init__(
        self, napari_viewer: Any, parent: QWidget | None = None, *, folder: Path | None = None
    ) -> None:
        super().__init__(parent)
        # torch's optimizers import its compiler stack at their first step (about 1 s,
        # holding the GIL in stretches): do it now, not when the user presses Start
        _workers.preload(OPTIMIZER_IMPORTS)
        self.viewer = napari_viewer
        self._folder = Path(folder) if folder is not None else models_dir()
        self.extra_config: dict[str, Any] = {}
        """FinetuneConfig fields not in the form (batch_size, patch_size, val_every, seed)."""
        self.zssr_network: Any = None
        """The ZSSRConfig of "Zero-shot on this view" (None: the paper's 8 x 64)."""
        self.adapt_config: dict[str, Any] = {}
        """`AdaptSettings` fields of "Adapt to this slide" not in the form (batch_size,
        patch_size, correction_layers, correction_channels, lr, val_every)."""
        self._adapting = False
        self._zero_shot = False
        self._job: _Job | None = None
        self._pbar: Any = None
        self._regions = RegionsLayer(napari_viewer, self._refresh)
        self._sr: Any = None
        self._t_last_draw = 0.0
        self._eta_marks: list[tuple[float, int]] = []  # (time, step) of the Step events
        self._before: dict[str, float] | None = None
        self.room: bool | None = None
        """None until shown; False while asking the dock area for room; True after."""
        self._t_start = 0.0
        self._max_s: float | None = None

        self.regions_label = QLabel()
        self.regions_label.setWordWrap(True)
        self.draw_button = QPushButton("Draw rectangles")
        form = self.settings = SettingsForm()
        # the form's boxes, also as the widget's own (the settings a script sets)
        self.mode_box, self.steps_box, self.lr_box = form.mode_box, form.steps_box, form.lr_box
        self.minutes_box, self.loss_box = form.minutes_box, form.loss_box
        self.layers_box, self.val_box = form.layers_box, form.val_box
        self.start_button = QPushButton("Start")
        self.zero_shot_button = QPushButton("Zero-shot on this view")
        self.zero_shot_button.setToolTip(TIPS["zero-shot"])
        self.adapt_button = QPushButton("Adapt to this slide")
        self.adapt_button.setToolTip(TIPS["adapt"])
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.eta_label = QLabel("")
        self.eta_label.setWordWrap(True)
        self.eta_label.setToolTip(TIPS["eta"])
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_label.setToolTip(TIPS["result"])
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumHeight(4 * self.log.fontMetrics().height() + 10)
        self.log.setPlaceholderText("notes, before / after metrics and errors appear here")
        self.folder_label = QLabel(f"versions saved in: {_breakable(self._folder)}")
        self.folder_label.setWordWrap(True)
        self.folder_label.setToolTip(str(self._folder))
        self.plot = CurvePlot()

        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.zero_shot_button)
        buttons.addWidget(self.adapt_button)
        buttons.addWidget(self.stop_button)
        content = QWidget()
        layout = QVBoxLayout(content)
        w: QWidget
        for w in (self.regions_label, self.draw_button):
            layout.addWidget(w)
        layout.addLayout(form.form)
        layout.addLayout(buttons)
        state = QHBoxLayout()
        state.addWidget(self.status, 1)
        state.addWidget(self.eta_label)
        layout.addLayout(state)
        for w in (self.result_label, self.plot, self.log, self.folder_label):
            layout.addWidget(w)
        layout.addStretch(1)
        # in a scroll area: docked under Enhance and Compare it must fit a short screen
        self.scroll_area = _dock.scroll_contents(self, content)

        self.draw_button.clicked.connect(self.draw_mode)
        self.start_button.clicked.connect(lambda: self.start())
        self.zero_shot_button.clicked.connect(lambda: self.start_zero_shot())
        self.adapt_button.clicked.connect(lambda: self.start_adapt())
        self.stop_button.clicked.connect(self.stop)
        for ev in ("inserted", "removed", "moved"):
            getattr(self.viewer.layers.events, ev).connect(self._refresh)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._shutdown)
        # else once an image comes, in its units (napari warns on a mix)
        if self._regions.has_images():
            self.shapes_layer()
        self._refresh()

    # ---------------------------------------------------------------- public API
    @property
    def folder(self) -> Path:
        """Folder of the saved versions (shown in the widget)."""
        return self._folder

    @folder.setter
    def folder(self, value: Path) -> None:
        self._folder = Path(value)
        self.folder_label.setText(f"versions saved in: {_breakable(self._folder)}")
        self.folder_label.setToolTip(str(self._folder))

    @property
    def running(self) -> bool:
        return self._job is not None

    def shapes_layer(self) -> Any:
        """The Shapes layer of regions; created if there is none, in pan-zoom mode and
        not selected, so that dragging still pans the slide ("Draw rectangles" draws)."""
        return self._regions.get()

    def draw_mode(self) -> None:
        """Select the regions layer, bring it to the top, and switch to add-rectangle
        (napari's grid, Compare's side by side, is switched off)."""
        self._regions.draw()

    def regions(self) -> list[tuple[int, int, int, int]]:
        """Rectangles (x, y, w, h) in LR level-0 px: the selected ones, or all; clipped."""
        pair, _ = self._pair(), self.shapes_layer()
        return [] if pair is None or pair.lr is None else self._regions.regions(pair.lr)

    def start(self) -> bool:
        """Check the inputs, then train in a worker; False (with a notification) if not possible."""
        form, extra = self.settings, self.extra_config
        return self._start(
            "finetune", lambda: plans.plan_finetune(self._pair(), form, extra, self.regions)
        )

    def start_zero_shot(self) -> bool:
        """Train ZSSR on the LR in view, in a worker; the SR layer then uses it."""
        seed = self.extra_config.get("seed", 0)
        return self._start(
            "zero-shot",
            lambda: plans.plan_zero_shot(self._pair(), self.settings, int(seed), self.view_region),
        )

    def start_adapt(self) -> bool:
        """Adapt the SR layer's model to this slide's LR (drawn rectangles, else the
        view) in a worker; the SR layer then uses the adapted model."""
        form, seed = self.settings, self.extra_config.get("seed", 0)
        return self._start(
            "adapt",
            lambda: plans.plan_adapt(
                self._pair(), form, int(seed), self.adapt_config, self.regions, self.view_region
            ),
        )

    def _start(self, kind: JobKind, plan: Callable[[], plans.JobPlan]) -> bool:
        """Make the plan and start its worker; False when one runs already or the plan
        is refused (said in the status, the log and a notification)."""
        if self.running:
            return False
        try:
            job = plan()
        except plans.refusals(kind) as exc:
            self._refuse(*plans.TITLES[kind], exc)
            return False
        self._launch(job)
        return True

    def _refuse(self, title: str, what: str, exc: Exception) -> None:
        """Say why training cannot start: status, log and a notification."""
        self.status.setText("cannot start")
        self.log.appendPlainText(f"{what}: {exc}")
        _dock.notify_error(f"{title}: {exc}")

    def _launch(self, plan: plans.JobPlan) -> None:
        """Start the training worker (`training.jobs.finetune_job`) and set the widget to
        its running state."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        job, pyramid, cfg = _Job(), plan.pyramid, plan.config
        zero_shot = plan.kind == "zero-shot"
        worker = create_worker(
            finetune_job,
            plan.kind,
            plan.lr_level,
            [tuple(r) for r in plan.rects],
            config=cfg,
            stop_event=job.stop_event,
            folder=self.folder,
            parent=pyramid.model,
            hr_level=plan.hr_level,
            network=self.zssr_network if zero_shot else None,
            device=str(getattr(pyramid.predictor, "device", "auto")),
            on_saved=pyramid.set_model,
            _start_thread=False,
        )
        job.worker = worker
        worker.yielded.connect(self._on_event)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_worker_finished)
        self.destroyed.connect(job.shutdown)  # the widget closed or napari quit mid-run
        self._job, self._sr = job, plan.pair.sr
        _set_busy(plan.pair.sr, True)  # the Enhance widget must not switch its model meanwhile
        self._adapting, self._zero_shot = plan.kind == "adapt", zero_shot
        self._pbar = progress(total=cfg.steps, desc=plan.title)
        self.plot.clear()
        self._eta_marks, self._t_start = [], time.perf_counter()
        self._max_s = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
        self.eta_label.setText("ETA: measuring ...")
        self.result_label.setText("measuring the model before fine-tuning ...")
        self.status.setText("training")
        self.log.appendPlainText(plan.what)
        self._set_running(True)
        # a short dock (under Enhance and Compare) shows Stop, the status and the ETA
        self.scroll_area.ensureWidgetVisible(self.eta_label)
        _workers.start(worker, owner=self, stop=job.stop_event.set)

    def view_region(
        self, max_side: int = plans.ZERO_SHOT_MAX_SIDE
    ) -> tuple[int, int, int, int] | None:
        """The LR level-0 rectangle (x, y, w, h) in view, at most `max_side` px a side
        around the view's centre; None without an LR layer."""
        pair = self._pair()
        if pair is None or pair.lr is None:
            return None
        return view_region(self.viewer, pair.lr, max_side)

    def stop(self) -> None:
        """End training within one step; the best model so far is kept."""
        if self._job is not None:
            self._job.stop_event.set()
            self.status.setText("stopping ...")
            self.log.appendPlainText("stopping: the best state validated so far is kept")
            self.stop_button.setEnabled(False)

    # ---------------------------------------------------------------- worker events (GUI thread)
    def _on_event(self, ev: Any) -> None:
        from napari_srgan_sqe.training.finetune import Started, Step, Validated

        if isinstance(ev, Started):
            for note in ev.notes:
                self.log.appendPlainText(f"note: {note}")
            self._before = ev.before
            self.log.appendPlainText(before_text(ev.before))
            self.result_label.setText(before_text(ev.before))
        elif isinstance(ev, Step):
            self.plot.add_loss(ev.step, ev.loss)
            bar = self._pbar
            if bar is not None:  # not a step that arrives after the run ended
                eta = self._eta(ev.step, bar.total)
                shown = "measuring ..." if eta is None else fmt_s(eta)
                self.eta_label.setText(f"step {ev.step}/{bar.total}, ETA {shown}")
                bar.update(ev.step - bar.n)  # last: napari's bar processes Qt events
        elif isinstance(ev, Validated):
            self.plot.add_val(ev.step, ev.psnr)
            if ev.step > 0 and self._adapting:  # no HR of the slide: a check, not a score
                within = "within tolerance" if ev.best else "below tolerance"
                self.status.setText(f"clean check {ev.psnr:.2f} dB ({within})")
            elif ev.step > 0:
                best = "best so far" if ev.best else "not better"
                self.status.setText(f"val PSNR {ev.psnr:.2f} dB ({best})")
                if ev.best:
                    self.log.appendPlainText(
                        f"step {ev.step}: PSNR {ev.psnr:.2f} dB, SSIM {ev.ssim:.4f} (best so far)"
                    )
                    self.result_label.setText(best_text(ev, self._before))
        elif isinstance(ev, Saved):
            self._on_switched(ev)
        elif isinstance(ev, Failed):
            self._on_error(ev.error)
        now = time.perf_counter()
        if now - self._t_last_draw > 0.25 or isinstance(ev, Validated | Saved):
            self._t_last_draw = now
            self.plot.update()

    def _on_switched(self, ev: Saved) -> None:
        res = ev.result
        text = outcome_text(res, zero_shot=self._zero_shot)
        if res.mode == "unpaired":
            for note in res.notes[2:]:  # the first two were shown when it started
                self.log.appendPlainText(f"note: {note}")
        if res.improved and ev.path is not None:
            sr = self._sr
            if sr is not None and sr in self.viewer.layers:
                # records the model and its file in the SR layer's tag: the Enhance
                # widget's Model box follows it
                _layers.show_pyramid(sr, model_path=ev.path)
                sr.name = _layers.role_name("sr", _layers.slide_name(sr), res.model.name)
                sr.refresh()
            self.log.appendPlainText(f"{text}\nsaved {ev.path.name}; the SR layer now uses it")
            # the file's name is in the log
            self.result_label.setText(f"{text}\nnow used by the SR layer: {res.model.name}")
        else:
            self.log.appendPlainText(text)
            self.result_label.setText(text)
        self.status.setText("done" if res.improved else "done (not improved)")
        self.finished.emit(res)

    def _eta(self, step: int, total: int | None) -> float | None:
        """Seconds left, from the pace since the second step (the first one warms up:
        caches, allocations), measured once two more steps are done; None before.
        Validation time between the steps is part of the pace. Capped by the time limit."""
        now = time.perf_counter()
        self._eta_marks.append((now, step))
        if total is None or len(self._eta_marks) < 2:
            return None
        t_ref, s_ref = self._eta_marks[1]
        if step - s_ref < 2:
            return None
        eta = (now - t_ref) / (step - s_ref) * max(0, total - step)
        if self._max_s is not None:
            eta = min(eta, max(0.0, self._t_start + self._max_s - now))
        return eta

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText("failed")
        self.result_label.setText(f"failed: {exc}; the previous model stays active")
        self.log.appendPlainText(f"failed: {exc}; the previous model stays active")
        _dock.notify_error(f"Fine-tune failed: {exc}")

    def _on_worker_finished(self) -> None:
        if self._job is not None:
            self.destroyed.disconnect(self._job.shutdown)
        if self._pbar is not None:
            self._pbar.close()
        self._pbar, self._job = None, None
        if self._sr is not None:
            _set_busy(self._sr, False)
        self._set_running(False)
        self.eta_label.setText("")
        self._adapting = False
        if _workers.alive(self):
            self.scroll_area.ensureWidgetVisible(self.result_label)

    def _set_running(self, running: bool) -> None:
        """Only Stop while a run goes; its settings are read at the start, so they are
        greyed out until it ends."""
        for w in (self.start_button, self.zero_shot_button, self.adapt_button):
            w.setEnabled(not running)
        self.settings.set_enabled(not running)
        self.stop_button.setEnabled(running)

    def _on_inserted(self, event: Any) -> None:
        """Keep the regions layer above new image layers (else rectangles hide under them),
        in the images' units (napari warns about layers in different units); make it
        when the first image comes."""
        regions = self._regions
        if event.value is not regions.layer and type(event.value).__name__ == "Image":
            if regions.layer is None and not regions.candidates():
                QTimer.singleShot(0, self._first_shapes)
            QTimer.singleShot(0, self._raise_shapes)  # not while the list is being changed
            regions.match_units()

    def _first_shapes(self) -> None:
        if _workers.alive(self) and self._regions.layer is None:
            if not self._regions.candidates():
                self.shapes_layer()
                self._refresh()

    def _raise_shapes(self) -> None:
        self._regions.raise_to_top()

    def _shutdown(self, *_: Any) -> None:
        if self._job is not None:
            self._job.shutdown()

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        _dock.fit_width(self.scroll_area)  # napari's style sheet (fonts) applies once docked
        _workers.stop_on_close(self, self._shutdown)  # the viewer window closed mid-run
        if self.room is None:  # the first time it is shown: docked by now
            self.room = False
            QTimer.singleShot(0, self._claim_room)

    def _claim_room(self) -> None:
        """Once docked: a tab beside Enhance when the window is too short for every dock,
        and up to 45% of the window's height from the docks above (a new dock otherwise
        gets a sliver); the rest of the form scrolls."""
        from napari_srgan_sqe._napari.compare_widget import CompareWidget
        from napari_srgan_sqe._napari.enhance_widget import EnhanceWidget

        content = self.scroll_area.widget()
        assert content is not None
        need = content.sizeHint().height()
        # too short for all the docks: a tab next to Enhance (making the model and
        # adapting it go together), else next to Compare
        if _dock.tabify_if_short(self, need, (EnhanceWidget, CompareWidget)):
            # the group takes Enhance's place; once laid out, all the docks below spare
            QTimer.singleShot(0, lambda: self._claim_tab_room(need))
            return
        _dock.claim_height(self, need, share=0.45)
        self.room = True

    def _claim_tab_room(self, need: int) -> None:
        if _workers.alive(self):
            _dock.claim_height(self, need)
            self.room = True

    def changeEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        super().changeEvent(event)
        if event.type() in (QEvent.Type.StyleChange, QEvent.Type.FontChange):
            _dock.fit_width(self.scroll_area)

    # ---------------------------------------------------------------- layers (GUI thread)
    def _pair(self) -> Any:
        return _layers.find_pair(self.viewer.layers)

    def _refresh(self, event: Any = None) -> None:
        """Mode availability and the regions summary, after any layer change."""
        pair = self._pair()
        self.settings.follow_hr(pair is not None and pair.hr is not None)
        if self._regions.current() is None:
            self.regions_label.setText("no regions layer: press 'Draw rectangles'")
        elif pair is None or pair.lr is None:
            self.regions_label.setText("no LR / SR layers yet: run Enhance first")
        else:
            self.regions_label.setText(self._regions.summary(pair.lr))


def _set_busy(layer: Any, busy: bool) -> None:
    """Mark an SR layer as being fine-tuned (`metadata["srgan_sqe"]["busy"]`)."""
    meta = dict(layer.metadata)
    tag = meta.get(_layers.META_KEY)
    if not isinstance(tag, dict):
        return
    tag = {k: v for k, v in tag.items() if k != "busy"}
    if busy:
        tag["busy"] = True
    meta[_layers.META_KEY] = tag
    layer.metadata = meta


def _breakable(path: Any) -> str:
    """A path that a word-wrapped label may break after each '/' (zero-width spaces)."""
    return str(path).replace("/", "/\u200b").replace("\\", "\\\u200b")
