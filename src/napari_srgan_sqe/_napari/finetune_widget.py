"""The "Fine-tune" widget: adapt the SR layer's model to rectangles drawn on the slide.

The widget only arranges layers and watches events. Reading the regions, training
(`training.finetune.iter_finetune`), saving the new version and switching the SR
pyramid to it all run in `finetune_job`, a generator in a napari thread worker that
yields typed events; the GUI thread turns them into the progress bar, the plot, the
labels and, at the end, `show_pyramid` on the SR layer. Nothing here imports torch.

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

import datetime as _dt
import json
import os
import re
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from qtpy.QtCore import QEvent, QPointF, QRectF, QSize, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QStandardItemModel
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_srgan_sqe._napari import _dock, _layers, _workers

if TYPE_CHECKING:
    from napari_srgan_sqe.training.regions import Mode

__all__ = ["Failed", "FinetuneWidget", "Switched", "finetune_job", "models_dir"]

SHAPES_NAME = "Fine-tune regions"
MODES = ("paired", "self-supervised")
ZERO_SHOT_MAX_SIDE = 512
"""Zero-shot trains on at most this many LR px a side of the view (around its centre)."""
ADAPT_MAX_SIDE = 1024
"""Without drawn rectangles, adaptation draws its real LR from at most this many LR px
a side of the view (around its centre)."""
OPTIMIZER_IMPORTS = "torch._dynamo"
"""What torch's optimizers import at their first step (some 800 modules): preloaded in
the background when the widget opens."""


def models_dir() -> Path:
    """Where fine-tuned versions are saved: $NAPARI_SRGAN_SQE_MODELS or ~/.napari-srgan-sqe/models."""
    env = os.environ.get("NAPARI_SRGAN_SQE_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".napari-srgan-sqe" / "models"


def version_path(folder: Path, parent_name: str, tag: str = "ft") -> Path:
    """A new, unused `<parent>-<tag>-<timestamp>[-n].safetensors` in `folder` ('ft' for
    fine-tuned, 'adapt' for adapted versions; an earlier version's suffix is dropped)."""
    base = re.sub(r"-(ft|adapt)-\d{8}-\d{6}(-\d+)?$", "", parent_name) or "model"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"{base}-{tag}-{stamp}.safetensors", 1
    while path.exists():
        n += 1
        path = folder / f"{base}-{tag}-{stamp}-{n}.safetensors"
    return path


@dataclass(frozen=True)
class Switched:
    """The worker's last event: the result, the saved file (None if not improved)."""

    result: Any
    path: Path | None


@dataclass(frozen=True)
class Failed:
    """The worker caught an error (passed as an event: superqt drops RuntimeErrors)."""

    error: BaseException


def training_degradation(model: Any) -> str:
    """The degradation preset a model was trained on (its file's metadata; models written
    before the scanner preset existed were trained on the clean D_s)."""
    preset = str(getattr(model, "metadata", {}).get("degradation", "clean"))
    return preset if preset in ("clean", "scanner") else "clean"


def finetune_job(
    lr_level: Any,
    hr_level: Any,
    rects: list[tuple[int, int, int, int]],
    pyramid: Any,
    config: Any,
    stop_event: threading.Event,
    folder: Path,
    zero_shot: bool = False,
    network: Any = None,
    adapt: Any = None,
) -> Generator[Any, None, None]:
    """Worker body: cut regions, fine-tune (or, with `zero_shot`, train a fresh ZSSR
    model on the LR regions; with `adapt`, the `AdaptSettings` of an unpaired
    adaptation to the LR regions), save the new version, switch the pyramid.

    Yields the library's events (Started, Step, Validated), then `Switched`, or
    `Failed` on any error (torch raises RuntimeErrors, which superqt's generator
    worker would swallow without a signal). Touches no viewer object.
    """
    from napari_srgan_sqe.models.modelfile import save_model
    from napari_srgan_sqe.training.adapt import iter_adapt
    from napari_srgan_sqe.training.finetune import Finished, cut_regions, iter_finetune
    from napari_srgan_sqe.training.unpaired_data import real_lr_image
    from napari_srgan_sqe.training.zero_shot import ZERO_SHOT_MODEL, iter_zero_shot, new_zssr

    try:
        model = new_zssr(name=ZERO_SHOT_MODEL, network=network) if zero_shot else pyramid.model
        path = version_path(folder, model.name, "adapt" if adapt is not None else "ft")
        meta = {"finetune_regions": json.dumps([dict(zip("xywh", r, strict=True)) for r in rects])}
        device = str(getattr(pyramid.predictor, "device", "auto"))
        if adapt is None:  # adaptation reads its real LR from the level in patches
            regions = cut_regions(lr_level, rects, hr=hr_level, scale=model.scale, config=config)
        if adapt is not None:
            meta["training_data"] = (
                f"adapted (unpaired) to {len(rects)} region(s) of the slide in view; clean LR "
                "from the bundled sample slide"
            )
            events = iter_adapt(
                model,
                [real_lr_image(lr_level, rects, "the slide in view")],
                settings=adapt,
                stop_event=stop_event,
                device=device,
                name=path.stem,
                metadata=meta,
            )
        elif zero_shot:
            meta["training_data"] = f"zero-shot on {len(rects)} region(s) of the slide in view"
            events = iter_zero_shot(
                regions,
                model=model,
                config=config,
                stop_event=stop_event,
                device=device,
                name=path.stem,
                metadata=meta,
            )
        else:
            events = iter_finetune(
                model,
                regions,
                config=config,
                stop_event=stop_event,
                device=device,
                name=path.stem,
                metadata=meta,
            )
        for ev in events:
            if not isinstance(ev, Finished):
                yield ev
                continue
            saved = None
            if ev.result.improved:
                folder.mkdir(parents=True, exist_ok=True)
                saved = save_model(ev.result.model, path)
                pyramid.set_model(ev.result.model)
            yield Switched(ev.result, saved)
    except Exception as exc:  # noqa: BLE001 - reported to the user on the GUI thread
        yield Failed(exc)


class CurvePlot(QWidget):
    """A small live plot against the training step: training loss (orange, left axis)
    and validation PSNR in dB on the held-out stripes (blue, right axis).

    The legend sits in its own row above the plotting area, so no curve covers it;
    each axis is labelled with its range, in the colour of its curve.
    """

    LOSS_COLOR = QColor(230, 140, 30)
    PSNR_COLOR = QColor(60, 140, 230)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.loss: list[tuple[float, float]] = []
        self.psnr: list[tuple[float, float]] = []
        self.setToolTip(
            "Training loss (left axis, no unit: the weighted sum of the loss terms) and "
            "PSNR on the held-out stripes (right axis, dB; step 0 = the model before "
            "fine-tuning), against the training step"
        )

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(280, 170)

    def clear(self) -> None:
        self.loss, self.psnr = [], []
        self.update()

    def add_loss(self, step: int, value: float) -> None:
        self.loss.append((float(step), float(value)))

    def add_val(self, step: int, value: float) -> None:
        self.psnr.append((float(step), float(value)))

    def plot_rect(self) -> QRectF:
        """The plotting area (inside the axes), in widget pixels."""
        return self._layout(self.fontMetrics())[0]

    def legend_rect(self) -> QRectF:
        """The legend rows above the plotting area (never overlapped by a curve)."""
        return self._layout(self.fontMetrics())[1]

    def _legend(self) -> list[tuple[QColor, str]]:
        loss = f": {self.loss[-1][1]:.4g}" if self.loss else ""
        psnr = f": {self.psnr[-1][1]:.2f} dB" if self.psnr else " (dB)"
        return [
            (self.LOSS_COLOR, f"training loss{loss}"),
            (self.PSNR_COLOR, f"validation PSNR{psnr}"),
        ]

    def _legend_places(self, fm: Any) -> list[tuple[float, int]]:
        """(x, row) of each legend item: side by side, or wrapped when too narrow."""
        places, x, row = [], 2.0, 0
        for _, label in self._legend():
            width = 18 + fm.horizontalAdvance(label)
            if x > 2.0 and x + width > self.width():
                x, row = 2.0, row + 1
            places.append((x, row))
            x += width + 12
        return places

    def _ticks(self) -> tuple[list[str], list[str]]:
        loss = [f"{v:.3g}" for v in _axis_range(self.loss)[::-1]] if self.loss else ["", ""]
        psnr = _tick_labels(_axis_range(self.psnr)[::-1]) if self.psnr else ["", ""]
        return loss, psnr

    def _layout(self, fm: Any) -> tuple[QRectF, QRectF]:
        line = fm.height()
        loss, psnr = self._ticks()
        left = max(fm.horizontalAdvance(t) for t in [*loss, "loss"]) + 6
        right = max(fm.horizontalAdvance(t) for t in [*psnr, "dB"]) + 6
        rows = 1 + max(row for _, row in self._legend_places(fm))
        legend = QRectF(0, 0, self.width(), rows * line + 4)
        top = legend.bottom() + line  # the axis titles' row
        bottom = self.height() - 2 * line - 2  # tick labels and the "step" title below
        area = QRectF(left, top, max(10.0, self.width() - left - right), max(10.0, bottom - top))
        return area, legend

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = p.fontMetrics()
        line = fm.height()
        area, legend = self._layout(fm)
        text = self.palette().color(self.foregroundRole())
        grey = QColor(128, 128, 128)

        for (color, label), (x, row) in zip(self._legend(), self._legend_places(fm), strict=True):
            y = legend.top() + 2 + row * line  # a colour swatch, then the name and latest value
            p.setPen(QPen(color, 3))
            p.drawLine(QPointF(x, y + line / 2), QPointF(x + 14, y + line / 2))
            p.setPen(text)
            p.drawText(QPointF(x + 18, y + fm.ascent()), label)

        p.setPen(QPen(grey))
        p.drawRect(area)
        loss_ticks, psnr_ticks = self._ticks()
        # axis titles above the axes; tick labels inside the axes' height, beside them
        rows = ((area.top() + fm.ascent(), 0), (area.bottom() - fm.descent(), 1))
        p.setPen(self.LOSS_COLOR)
        p.drawText(QPointF(2, area.top() - fm.descent() - 2), "loss")
        for yy, i in rows:
            w = fm.horizontalAdvance(loss_ticks[i])
            p.drawText(QPointF(area.left() - w - 3, yy), loss_ticks[i])
        p.setPen(self.PSNR_COLOR)
        p.drawText(QPointF(area.right() + 3, area.top() - fm.descent() - 2), "dB")
        for yy, i in rows:
            p.drawText(QPointF(area.right() + 3, yy), psnr_ticks[i])
        steps = [s for s, _ in self.loss + self.psnr] or [0.0]
        x_max = max(max(steps), 1.0)
        p.setPen(text)
        base = area.bottom() + fm.ascent() + 2
        p.drawText(QPointF(area.left(), base), "0")
        last = f"{x_max:.0f}"
        p.drawText(QPointF(area.right() - fm.horizontalAdvance(last), base), last)
        title = "training step"
        p.drawText(QPointF(area.center().x() - fm.horizontalAdvance(title) / 2, base + line), title)

        p.setClipRect(area)
        for series, color in ((self.loss, self.LOSS_COLOR), (self.psnr, self.PSNR_COLOR)):
            if not series:
                continue
            lo, hi = _axis_range(series)
            pts = [
                QPointF(
                    area.left() + area.width() * s / x_max,
                    area.bottom() - area.height() * (v - lo) / (hi - lo),
                )
                for s, v in series
            ]
            p.setPen(QPen(color, 1.5))
            for a, b in zip(pts, pts[1:], strict=False):
                p.drawLine(a, b)
            if len(pts) <= 8:
                for pt in pts:
                    p.drawEllipse(pt, 2.0, 2.0)
        p.end()


def _tick_labels(values: tuple[float, ...]) -> list[str]:
    """Labels with enough decimals (1 to 3) to tell the values apart."""
    import math

    span = max(values) - min(values)
    decimals = 1 if span >= 1 or span == 0 else min(3, max(1, -math.floor(math.log10(span))))
    return [f"{v:.{decimals}f}" for v in values]


def _axis_range(series: list[tuple[float, float]]) -> tuple[float, float]:
    """(low, high) of a curve's values with 5% room, never empty."""
    values = [v for _, v in series]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 1e-3)
    return lo - pad, hi + pad


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
        self._shapes: Any = None
        self._sr: Any = None
        self._t_last_draw = 0.0
        self._eta_marks: list[tuple[float, int]] = []  # (time, step) of the Step events
        self._before: dict[str, float] | None = None
        self.room: bool | None = None
        """None until shown; False while asking the dock area for room; True after."""
        self._t_start = 0.0
        self._max_s: float | None = None
        self._had_hr = False  # an HR layer was there at the last refresh
        self._mode_chosen = False  # the user picked a mode: never switch it for them

        self.regions_label = QLabel()
        self.regions_label.setWordWrap(True)
        self.draw_button = QPushButton("Draw rectangles")
        self.mode_box = QComboBox()
        self.mode_box.addItems(MODES)
        self.steps_box = QSpinBox()
        self.steps_box.setRange(1, 100_000)
        self.steps_box.setValue(200)
        self.lr_box = QDoubleSpinBox()
        self.lr_box.setDecimals(6)
        self.lr_box.setRange(1e-6, 1e-1)
        self.lr_box.setSingleStep(1e-5)
        self.lr_box.setValue(5e-5)
        from napari_srgan_sqe.training.finetune import LOSS_PRESETS

        self.loss_box = QComboBox()
        self.loss_box.addItems(LOSS_PRESETS)
        self.loss_box.setToolTip("Loss weights of the paper's variants, without the GAN term")
        self.layers_box = QComboBox()
        self.layers_box.addItems(("all", "last"))
        self.layers_box.setToolTip("'last': only the layers after the residual trunk")
        self.val_box = QDoubleSpinBox()
        self.val_box.setRange(0.05, 0.5)
        self.val_box.setSingleStep(0.05)
        self.val_box.setValue(0.25)
        self.val_box.setToolTip("Right-hand stripe of each region held out for validation")
        self.start_button = QPushButton("Start")
        self.zero_shot_button = QPushButton("Zero-shot on this view")
        self.zero_shot_button.setToolTip(
            "Train ZSSR, a small network learnt from this slide's own LR (no HR, no "
            "training set), on the part of the slide in view (up to 512 x 512 LR px "
            "around its centre), for Steps steps; the SR layer then uses it. Slow: "
            "ZSSR runs 8 passes per tile"
        )
        self.adapt_button = QPushButton("Adapt to this slide")
        self.adapt_button.setToolTip(
            "Learn, without HR, a correction of this slide's LR (scanner blur, noise, "
            "JPEG) into the clean LR the SR layer's model expects (unpaired, Maeda 2020), "
            "from the drawn rectangles or the part in view (up to 1024 x 1024 LR px), for "
            "Steps steps; the SR layer then uses the corrected model"
        )
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.eta_label = QLabel("")
        self.eta_label.setWordWrap(True)
        self.eta_label.setToolTip(
            "Time left, from the pace of the steps done so far (the first step, which "
            "warms up, is not counted); capped by the time limit"
        )
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_label.setToolTip(
            "PSNR and SSIM on the held-out stripes of the regions (not trained on), "
            "before fine-tuning and for the best state so far / kept"
        )
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumHeight(4 * self.log.fontMetrics().height() + 10)
        self.log.setPlaceholderText("notes, before / after metrics and errors appear here")
        self.minutes_box = QDoubleSpinBox()
        self.minutes_box.setRange(0.0, 24 * 60.0)
        self.minutes_box.setSpecialValueText("none")
        self.minutes_box.setSuffix(" min")
        self.minutes_box.setToolTip("Stop after this time even if steps remain (best state kept)")
        self.folder_label = QLabel(f"versions saved in: {_breakable(self._folder)}")
        self.folder_label.setWordWrap(True)
        self.folder_label.setToolTip(str(self._folder))
        self.plot = CurvePlot()

        form = QFormLayout()
        form.addRow("Mode", self.mode_box)
        form.addRow("Steps", self.steps_box)
        form.addRow("Time limit", self.minutes_box)
        form.addRow("Learning rate", self.lr_box)
        form.addRow("Loss preset", self.loss_box)
        form.addRow("Layers", self.layers_box)
        form.addRow("Validation part", self.val_box)
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
        layout.addLayout(form)
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
        self.mode_box.activated.connect(self._on_mode_chosen)  # user actions only
        for ev in ("inserted", "removed", "moved"):
            getattr(self.viewer.layers.events, ev).connect(self._refresh)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._shutdown)
        if self._has_images():  # else once an image comes, in its units (napari warns on a mix)
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
        layers = self.viewer.layers
        if self._shapes is not None and self._shapes in layers:
            return self._shapes
        shapes = self._shapes_layers()
        named = [lay for lay in shapes if lay.name == SHAPES_NAME]
        layer = (named or shapes[::-1] or [None])[0]
        if layer is None:
            units = self._image_units()  # the images' (e.g. um): napari warns on a mix
            selection = self.viewer.layers.selection
            active, selected = selection.active, set(selection)
            layer = self.viewer.add_shapes(
                name=SHAPES_NAME,
                edge_color="yellow",
                face_color="transparent",
                edge_width=2,
                **({"units": units} if units is not None else {}),
            )
            layer.mode = "pan_zoom"
            if active is not None:  # napari selects a new layer: give the selection back
                selection.clear()
                selection.update(selected)
                selection.active = active
        self._watch_shapes(layer)
        return layer

    def draw_mode(self) -> None:
        """Select the regions layer, bring it to the top, and switch to add-rectangle.

        Rectangles are drawn in one view: napari's grid (Compare's side by side) is
        switched off, and the Compare widget follows with its overlay layout.
        """
        layer = self.shapes_layer()
        grid = _layers.grid_of(self.viewer)
        if grid.enabled:
            grid.enabled = False
        layer.visible = True
        self._raise_shapes()
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"

    def regions(self) -> list[tuple[int, int, int, int]]:
        """Rectangles (x, y, w, h) in LR level-0 px: the selected ones, or all; clipped."""
        pair, shapes = self._pair(), self.shapes_layer()
        if pair is None or pair.lr is None:
            return []
        rects = _rectangles(shapes, pair.lr)
        chosen = [rects[i] for i in sorted(shapes.selected_data) if i in rects]
        return chosen or list(rects.values())

    def start(self) -> bool:
        """Check the inputs, then train in a worker; False (with a notification) if not possible."""
        from napari_srgan_sqe.config import ConfigError, FinetuneConfig, loss_preset, validate
        from napari_srgan_sqe.models.method import StochasticModelError, require_deterministic
        from napari_srgan_sqe.training.finetune import RegionError, check_regions

        if self.running:
            return False
        mode = self.mode_box.currentText()
        try:
            pair, pyramid = self._sr_source("its model is fine-tuned")
            if pyramid.model.variant == "bicubic":
                raise RegionError("the SR layer uses bicubic (no weights): Enhance with a model")
            if mode == "paired" and pair.hr is None:
                raise RegionError("paired mode needs an HR layer; use self-supervised")
            loss = loss_preset(self.loss_box.currentText()).model_copy(update={"lam_a": 0.0})
            cfg = validate(
                FinetuneConfig,
                {
                    "mode": mode,
                    "steps": self.steps_box.value(),
                    "lr": self.lr_box.value(),
                    "train_layers": self.layers_box.currentText(),
                    "val_fraction": self.val_box.value(),
                    "max_minutes": self.minutes_box.value() or None,
                    "loss": loss.model_dump(),
                    # pseudo-pairs made the way the model's own training LR was
                    "degradation": training_degradation(pyramid.model),
                    **self.extra_config,
                },
                source="the Fine-tune settings",
            )
            require_deterministic(pyramid.model, "Fine-tuning")
            lr_level = _layers.layer_levels(pair.lr)[0]
            rects = check_regions(
                self.regions(),
                lr_level.shape,
                mode=cast("Mode", mode),  # one of MODES, as FinetuneConfig checked
                scale=pyramid.scale,
                config=cfg,
            )
        except (RegionError, ConfigError, StochasticModelError) as exc:
            self._refuse("Fine-tune", "cannot start", exc)
            return False
        hr_level = _layers.layer_levels(pair.hr)[0] if mode == "paired" else None
        what = f"{mode} fine-tuning of {pyramid.model.name!r} on {len(rects)} region(s)"
        self._launch(pair, pyramid, cfg, rects, lr_level, hr_level, zero_shot=False, what=what)
        return True

    def _sr_source(self, use: str) -> tuple[Any, Any]:
        """The layer pair and its SR layer's pyramid; RegionError without an SR layer
        (`use`: what training does with the SR layer's model)."""
        from napari_srgan_sqe.training.finetune import RegionError

        pair = self._pair()
        pyramid = _layers.pyramid_of(pair.sr) if pair is not None and pair.sr else None
        if pyramid is None or pair is None:
            raise RegionError(f"no SR layer: run Enhance first ({use})")
        return pair, pyramid

    def _view_or_refuse(self, max_side: int) -> tuple[int, int, int, int]:
        """`view_region(max_side)`; RegionError without an LR layer."""
        from napari_srgan_sqe.training.finetune import RegionError

        region = self.view_region(max_side)
        if region is None:
            raise RegionError("no LR layer in view")
        return region

    def _refuse(self, title: str, what: str, exc: Exception) -> None:
        """Say why training cannot start: status, log and a notification."""
        self.status.setText("cannot start")
        self.log.appendPlainText(f"{what}: {exc}")
        _dock.notify_error(f"{title}: {exc}")

    def _launch(
        self,
        pair: Any,
        pyramid: Any,
        cfg: Any,
        rects: Any,
        lr_level: Any,
        hr_level: Any,
        *,
        zero_shot: bool,
        what: str,
        adapt: bool = False,
    ) -> None:
        """Start the training worker and set the widget to its running state (`adapt`:
        `cfg` is the `AdaptSettings` of an unpaired adaptation)."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        job = _Job()
        worker = create_worker(
            finetune_job,
            lr_level,
            hr_level,
            [tuple(r) for r in rects],
            pyramid,
            cfg,
            job.stop_event,
            self.folder,
            zero_shot,
            self.zssr_network if zero_shot else None,
            cfg if adapt else None,
            _start_thread=False,
        )
        job.worker = worker
        worker.yielded.connect(self._on_event)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_worker_finished)
        self.destroyed.connect(job.shutdown)  # the widget closed or napari quit mid-run
        self._job, self._sr = job, pair.sr
        _set_busy(pair.sr, True)  # the Enhance widget must not switch its model meanwhile
        self._adapting = adapt
        self._zero_shot = zero_shot
        title = "Adapt" if adapt else "Zero-shot" if zero_shot else "Fine-tune"
        self._pbar = progress(total=cfg.steps, desc=title)
        self.plot.clear()
        self._eta_marks, self._t_start = [], time.perf_counter()
        self._max_s = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
        self.eta_label.setText("ETA: measuring ...")
        self.result_label.setText("measuring the model before fine-tuning ...")
        self.status.setText("training")
        self.log.appendPlainText(what)
        self._set_running(True)
        # a short dock (under Enhance and Compare) shows Stop, the status and the ETA
        self.scroll_area.ensureWidgetVisible(self.eta_label)
        _workers.start(worker, owner=self, stop=job.stop_event.set)

    def view_region(self, max_side: int = ZERO_SHOT_MAX_SIDE) -> tuple[int, int, int, int] | None:
        """The LR level-0 rectangle (x, y, w, h) in view, at most `max_side` px a side
        around the view's centre; None without an LR layer."""
        import numpy as np

        pair = self._pair()
        if pair is None or pair.lr is None:
            return None
        lr = pair.lr
        height, width = (int(v) for v in _layers.layer_levels(lr)[0].shape[:2])
        y_min, x_min, y_max, x_max = _layers.view_rect_world(self.viewer)  # one grid cell's
        lo = np.asarray(lr.world_to_data((y_min, x_min)))[-2:] + 0.5  # pixel edges
        hi = np.asarray(lr.world_to_data((y_max, x_max)))[-2:] + 0.5
        (y0, x0), (y1, x1) = np.maximum(lo, 0), np.minimum(hi, (height, width))
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        h, w = min(y1 - y0, max_side), min(x1 - x0, max_side)
        y = int(np.clip(round(cy - h / 2), 0, max(0, height - h)))
        x = int(np.clip(round(cx - w / 2), 0, max(0, width - w)))
        return x, y, int(min(w, width - x)), int(min(h, height - y))

    def start_zero_shot(self) -> bool:
        """Train ZSSR on the LR in view, in a worker; the SR layer then uses it."""
        from napari_srgan_sqe.config import ConfigError
        from napari_srgan_sqe.training.finetune import RegionError, check_regions
        from napari_srgan_sqe.training.zero_shot import zero_shot_config

        if self.running:
            return False
        try:
            pair, pyramid = self._sr_source("ZSSR then replaces its model")
            region = self._view_or_refuse(ZERO_SHOT_MAX_SIDE)
            cfg = zero_shot_config(
                self.steps_box.value(),
                # pseudo-LR made like the slide's LR: the current model was chosen for it
                degradation=training_degradation(pyramid.model),
                max_minutes=self.minutes_box.value() or None,
                seed=int(self.extra_config.get("seed", 0)),
            )
            lr_level = _layers.layer_levels(pair.lr)[0]
            rects = check_regions(
                [region], lr_level.shape, mode="self-supervised", scale=pyramid.scale, config=cfg
            )
        except (RegionError, ConfigError) as exc:
            self._refuse("Zero-shot", "cannot start zero-shot", exc)
            return False
        x, y, w, h = rects[0]
        self._launch(
            pair,
            pyramid,
            cfg,
            rects,
            lr_level,
            None,
            zero_shot=True,
            what=f"zero-shot ZSSR on the view ({w} x {h} LR px at x {x}, y {y})",
        )
        return True

    def start_adapt(self) -> bool:
        """Adapt the SR layer's model to this slide's LR (drawn rectangles, else the
        view) in a worker; the SR layer then uses the adapted model."""
        from napari_srgan_sqe.config import ConfigError
        from napari_srgan_sqe.models.method import StochasticModelError
        from napari_srgan_sqe.training.adapt import (
            AdaptSettings,
            check_adaptable,
            check_real_regions,
        )
        from napari_srgan_sqe.training.finetune import RegionError

        if self.running:
            return False
        try:
            pair, pyramid = self._sr_source("its model is adapted")
            check_adaptable(pyramid.model)
            settings = AdaptSettings(
                **{
                    "steps": self.steps_box.value(),
                    "max_minutes": self.minutes_box.value() or None,
                    "seed": int(self.extra_config.get("seed", 0)),
                    **self.adapt_config,
                }
            )
            drawn = self.regions()
            wanted = drawn
            if not drawn:
                wanted = [self._view_or_refuse(ADAPT_MAX_SIDE)]
            lr_level = _layers.layer_levels(pair.lr)[0]
            rects = check_real_regions(wanted, lr_level.shape, settings.patch_size)
        except (RegionError, ConfigError, StochasticModelError, TypeError) as exc:
            self._refuse("Adapt", "cannot adapt", exc)
            return False
        where = (
            f"{len(rects)} drawn region(s)"
            if drawn
            else "the view ({} x {} LR px)".format(*rects[0][2:])
        )
        self._launch(
            pair,
            pyramid,
            settings,
            rects,
            lr_level,
            None,
            zero_shot=False,
            adapt=True,
            what=f"adapting {pyramid.model.name!r} to this slide's LR in {where} (unpaired)",
        )
        return True

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
            self.log.appendPlainText(_before_text(ev.before))
            self.result_label.setText(_before_text(ev.before))
        elif isinstance(ev, Step):
            self.plot.add_loss(ev.step, ev.loss)
            bar = self._pbar
            if bar is not None:  # not a step that arrives after the run ended
                eta = self._eta(ev.step, bar.total)
                shown = "measuring ..." if eta is None else _fmt_s(eta)
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
                    before = f"{_before_text(self._before)}\n" if self._before else ""
                    self.result_label.setText(
                        f"{before}best so far (step {ev.step}): PSNR {ev.psnr:.2f} dB, "
                        f"SSIM {ev.ssim:.4f}"
                    )
        elif isinstance(ev, Switched):
            self._on_switched(ev)
        elif isinstance(ev, Failed):
            self._on_error(ev.error)
        now = time.perf_counter()
        if now - self._t_last_draw > 0.25 or isinstance(ev, Validated | Switched):
            self._t_last_draw = now
            self.plot.update()

    def _on_switched(self, ev: Switched) -> None:
        res = ev.result
        b, a = res.before, res.after
        stopped = f", stopped after {res.steps_done} steps" if res.stopped else ""
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
            check = _measured_on(res.mode, zero_shot=self._zero_shot)
            fell = " (SSIM fell a little)" if a["ssim"] < b["ssim"] else ""
            summary = (
                f"{check}PSNR {b['psnr']:.2f} -> {a['psnr']:.2f} dB, SSIM {b['ssim']:.4f} -> "
                f"{a['ssim']:.4f}{fell} (best step {res.best_step}{stopped})"
            )
            self.log.appendPlainText(f"{summary}\nsaved {ev.path.name}; the SR layer now uses it")
            # the file's name is in the log
            self.result_label.setText(f"{summary}\nnow used by the SR layer: {res.model.name}")
        else:
            if res.mode == "unpaired":
                text = f"{res.notes[-1]}{stopped}"
            else:
                text = (
                    f"validation did not improve (PSNR {b['psnr']:.2f} dB before, SSIM "
                    f"{b['ssim']:.4f}{stopped}): the original model is kept"
                )
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
        idle: list[QWidget] = [self.start_button, self.zero_shot_button, self.adapt_button]
        idle += [self.mode_box, self.steps_box, self.minutes_box, self.lr_box]
        idle += [self.loss_box, self.layers_box, self.val_box]
        for w in idle:
            w.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def _on_inserted(self, event: Any) -> None:
        """Keep the regions layer above new image layers (else rectangles hide under them),
        in the images' units (napari warns about layers in different units); make it
        when the first image comes."""
        if event.value is not self._shapes and type(event.value).__name__ == "Image":
            if self._shapes is None and not self._shapes_layers():
                QTimer.singleShot(0, self._first_shapes)
            QTimer.singleShot(0, self._raise_shapes)  # not while the list is being changed
            self._match_units()

    def _first_shapes(self) -> None:
        if _workers.alive(self) and self._shapes is None and not self._shapes_layers():
            self.shapes_layer()
            self._refresh()

    def _has_images(self) -> bool:
        return any(type(x).__name__ == "Image" for x in self.viewer.layers)

    def _shapes_layers(self) -> list[Any]:
        return [x for x in self.viewer.layers if type(x).__name__ == "Shapes"]

    def _match_units(self) -> None:
        shapes, units = self._shapes, self._image_units()
        if shapes is None or units is None or getattr(shapes, "units", None) is None:
            return
        if tuple(str(u) for u in shapes.units[-2:]) != units:
            shapes.units = units

    def _raise_shapes(self) -> None:
        layers, shapes = self.viewer.layers, self._shapes
        if shapes is not None and shapes in layers and layers.index(shapes) != len(layers) - 1:
            layers.move(layers.index(shapes), len(layers))

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

    def _image_units(self) -> Any:
        """The units the image layers share (e.g. ('micrometer', 'micrometer')), or None."""
        units = {
            tuple(str(u) for u in layer.units[-2:])
            for layer in self.viewer.layers
            if type(layer).__name__ == "Image" and getattr(layer, "units", None) is not None
        }
        return next(iter(units)) if len(units) == 1 else None

    # ---------------------------------------------------------------- layers (GUI thread)
    def _pair(self) -> Any:
        return _layers.find_pair(self.viewer.layers)

    def _watch_shapes(self, layer: Any) -> None:
        if layer is self._shapes:
            return
        self._shapes = layer
        layer.events.data.connect(self._refresh)
        layer.events.highlight.connect(self._refresh)

    def _on_mode_chosen(self, _index: int = 0) -> None:
        self._mode_chosen = True

    def _refresh(self, event: Any = None) -> None:
        """Mode availability and the regions summary, after any layer change."""
        pair = self._pair()
        has_hr = pair is not None and pair.hr is not None
        model = self.mode_box.model()
        assert isinstance(model, QStandardItemModel)  # a QComboBox's own model
        item = model.item(0)
        assert item is not None
        item.setEnabled(has_hr)
        item.setToolTip("" if has_hr else "needs an HR layer (Enhance with 'simulate LR')")
        if not has_hr and self.mode_box.currentIndex() == 0:
            self.mode_box.setCurrentIndex(1)
        elif has_hr and not self._had_hr and not self._mode_chosen:
            self.mode_box.setCurrentIndex(0)  # an HR layer just appeared: paired is better
        self._had_hr = has_hr
        if self._shapes is None or self._shapes not in self.viewer.layers:
            self._shapes = None
            self.regions_label.setText("no regions layer: press 'Draw rectangles'")
            return
        if pair is None or pair.lr is None:
            self.regions_label.setText("no LR / SR layers yet: run Enhance first")
            return
        rects = _rectangles(self._shapes, pair.lr)
        sel = [rects[i] for i in self._shapes.selected_data if i in rects]
        area = sum(r[2] * r[3] for r in rects.values())
        text = f"{len(rects)} rectangle(s), {area / 1e6:.3f} LR Mpx"
        if sel:
            sel_area = sum(r[2] * r[3] for r in sel)
            text += f"; {len(sel)} selected ({sel_area / 1e6:.3f} Mpx): training uses those"
        self.regions_label.setText(text)


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


def _rectangles(shapes: Any, lr_layer: Any) -> dict[int, tuple[int, int, int, int]]:
    """Rectangles of `shapes` by index, as (x, y, w, h) LR level-0 px, clipped to the image."""
    import numpy as np

    h, w = _layers.layer_levels(lr_layer)[0].shape[:2]
    out = {}
    for i, (kind, verts) in enumerate(zip(shapes.shape_type, shapes.data, strict=True)):
        if kind != "rectangle":
            continue
        world = [shapes.data_to_world(v) for v in np.asarray(verts)]
        data = np.array([lr_layer.world_to_data(p)[-2:] for p in world])
        y0, x0 = np.floor(data.min(axis=0) + 0.5).astype(int)
        y1, x1 = np.floor(data.max(axis=0) + 0.5).astype(int)
        if y1 > 0 and x1 > 0 and y0 < h and x0 < w:  # partly outside: clip; wholly: report
            y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
        out[i] = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    return out


def _breakable(path: Any) -> str:
    """A path that a word-wrapped label may break after each '/' (zero-width spaces)."""
    return str(path).replace("/", "/\u200b").replace("\\", "\\\u200b")


def _measured_on(mode: str, *, zero_shot: bool = False) -> str:
    """What a result line's numbers compare, in words (the start of the line)."""
    if mode == "unpaired":
        return "clean check "
    if zero_shot:
        return "held-out pseudo-pairs, bicubic -> ZSSR: "
    if mode == "self-supervised":
        return "held-out pseudo-pairs: "
    return "held-out HR stripes: "


def _before_text(before: dict[str, float]) -> str:
    return f"before: PSNR {before['psnr']:.2f} dB, SSIM {before['ssim']:.4f}"


def _fmt_s(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"
