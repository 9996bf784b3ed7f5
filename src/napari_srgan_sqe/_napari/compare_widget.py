"""The "Compare" widget: LR | SR | HR side by side or overlaid, with quality readouts.

Readouts are for the field of view: the part of SR level 0 (the HR pixel grid) under
the camera, its centre `MAX_CROP` px at most (`_layers.fov_box`). After the camera
settles (debounced), `compute_readouts` runs in a thread worker on arrays captured on
the GUI thread: it crops SR, HR and LR level 0, and yields one `ReadoutColumn` per
comparison (SR vs HR, bicubic(LR) vs HR; with no HR the consistency D_s(SR) vs LR).
Every request carries a generation number; a column of an older generation is
dropped, so a slow result never overwrites a newer view.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QEvent, QSize, Qt, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_srgan_sqe._napari import _dock, _layers, _workers

__all__ = ["CompareWidget", "Readout", "ReadoutColumn", "compute_readouts"]

log = logging.getLogger(__name__)

METRICS = (
    ("psnr", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("ms_ssim", "MS-SSIM"),
    ("qilv", "QILV"),
    ("rrmse", "RRMSE"),
)
LOWER_IS_BETTER = frozenset({"rrmse"})
SR_VS_HR, BICUBIC_VS_HR, CONSISTENCY = "SR vs HR", "bicubic vs HR", "D_s(SR) vs LR"
"""Readout column names (`Readout.columns` keys); the table shows `COLUMN_LABELS`."""
CONSISTENCY_METRICS = ("psnr", "ssim")
METRIC_TIPS = {
    "psnr": "Peak signal-to-noise ratio, in decibels: higher is closer to the reference "
    "(+1 dB is about 11% less error)",
    "ssim": "Structural similarity, 0 to 1: do local brightness, contrast and structure "
    "match? 1 is identical",
    "ms_ssim": "Multi-scale SSIM, 0 to 1: SSIM over five scales, from cells to tissue; "
    "needs a view of at least 161 px a side ('-' below that)",
    "qilv": "Quality index based on local variance, 0 to 1: does the texture (local "
    "contrast) match? 1 is identical",
    "rrmse": "Relative root-mean-square error: the size of the error divided by the "
    "reference's; lower is closer, 0 is identical",
}
COLUMN_LABELS = {
    SR_VS_HR: ("SR", "The super-resolved image compared with HR (the original scan)"),
    BICUBIC_VS_HR: (
        "bicubic",
        "Plain bicubic enlargement of the LR compared with HR: the baseline SR should beat",
    ),
    "gain": (
        "gain",
        "How much closer SR is to HR than bicubic is: positive (green) means SR is better "
        "(for RRMSE, bicubic minus SR, so positive is better there too)",
    ),
    CONSISTENCY: (
        "consistency with LR",
        "No HR to compare with, so SR is checked against its own input: SR is shrunk "
        "back 4x with the reference degradation D_4 and compared with the LR (D_s(SR) "
        "vs LR). High values mean SR keeps what the scan shows and contradicts none of "
        "it; they say nothing about how sharp or how true the added detail is.",
    ),
}
HR_CAPTION = "SR and bicubic (the baseline) against HR: higher is closer, RRMSE lower."
CONSISTENCY_CAPTION = "No HR: SR shrunk back to LR size against the LR (higher agrees more)."
MODES = ("side by side", "overlay")
DEBOUNCE_MS = 300


@dataclass(frozen=True)
class ReadoutColumn:
    """One comparison's metrics (None where a metric does not apply)."""

    generation: int
    name: str
    values: dict[str, float | None]


@dataclass
class Readout:
    """The latest complete readout: where (the crop box) and every column."""

    generation: int
    box: _layers.CropBox
    columns: dict[str, dict[str, float | None]] = field(default_factory=dict)


def compute_readouts(
    generation: int, box: _layers.CropBox, sr0: Any, lr0: Any = None, hr0: Any = None
) -> Generator[ReadoutColumn, None, None]:
    """Metrics of the crop `box` of SR level 0 against HR (and bicubic as the baseline).

    With no HR, yields the consistency of D_s(SR) with LR (PSNR, SSIM). Arrays are
    level-0 numpy / dask arrays; nothing here touches the viewer (worker thread).
    """
    from napari_srgan_sqe.degradation import degrade
    from napari_srgan_sqe.metrics import all_metrics, psnr, ssim

    s, (y0, y1, x0, x1) = box.scale, (box.y0, box.y1, box.x0, box.x1)
    if hr0 is not None:
        hr, _ = _layers.read_crop(hr0, y0, y1, x0, x1)
        sr, _ = _layers.read_crop(sr0, y0, y1, x0, x1)
        yield ReadoutColumn(generation, SR_VS_HR, all_metrics(sr, hr))
        if lr0 is not None:
            from napari_srgan_sqe.models.blocks import bicubic_upscale

            lr, margins = _layers.read_crop(lr0, *box.lr, margin=2)  # bicubic support
            bicubic = _layers.crop_margins(bicubic_upscale(lr, s), margins, s)
            yield ReadoutColumn(generation, BICUBIC_VS_HR, all_metrics(bicubic, hr))
    elif lr0 is not None:
        # margin of 2 LR px covers the blur of D_s (radius 2s - 2 HR px), so the crop's
        # D_s equals that of the whole SR image (symmetric padding at the image border)
        sr, margins = _layers.read_crop(sr0, y0, y1, x0, x1, margin=2 * s)
        down = _layers.crop_margins(degrade(sr, s), [m // s for m in margins])
        lr, _ = _layers.read_crop(lr0, *box.lr)
        values = dict.fromkeys(k for k, _ in METRICS)
        values.update(psnr=psnr(down, lr), ssim=ssim(down, lr))
        yield ReadoutColumn(generation, CONSISTENCY, values)


class CompareWidget(QWidget):
    """Arrange a pair's layers and show quality readouts for the field of view.

    The controls sit in a scroll area (`scroll_area`), so every readout row can be
    reached in a short dock; the table itself never scrolls.
    """

    readout_ready = Signal(object)
    """Emitted with the `Readout` when all its columns are in."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.max_crop = _layers.MAX_CROP
        """Largest crop side in HR px (metrics of a larger view use its centre)."""
        self.last_readout: Readout | None = None
        self._generation = 0
        self._worker: Any = None
        self._pending = False
        self._partial: Readout | None = None
        self._hidden: list[Any] = []
        self._arranged_pair: str | None = None  # the pair laid out last (None: none yet)
        self._arranging = False
        self._closed = False
        self.room: bool | None = None
        """None until shown; False while asking the dock area for room; True after."""
        self._columns: list[str] = []

        self.pair_box = QComboBox()
        self.pair_box.setToolTip("The SR layer (and its LR and HR) to compare")
        self.pair_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.pair_box.setMinimumContentsLength(12)  # long layer names must not widen the dock
        self.mode_box = QComboBox()
        self.mode_box.addItems(MODES)
        self.mode_box.setToolTip(
            "side by side: LR | SR | HR in a grid, one camera for all; "
            "overlay: SR drawn over HR (fade with the SR opacity)"
        )
        self.arrange_button = QPushButton("Arrange")
        self.arrange_button.setToolTip("Lay the layers out again, e.g. after reordering them")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(100)
        self.opacity.setToolTip("Opacity of the SR layer over HR (overlay mode)")
        self.fov_label = QLabel("no SR layer yet: use Enhance")
        self.fov_label.setWordWrap(True)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.table = QTableWidget(len(METRICS), 3)
        self._setup_table()
        self._set_columns([SR_VS_HR, BICUBIC_VS_HR, "gain"])

        content = QWidget()
        form = QFormLayout()
        form.addRow("Pair", self.pair_box)
        layout_row = QHBoxLayout()
        layout_row.addWidget(self.mode_box, 1)
        layout_row.addWidget(self.arrange_button)
        form.addRow("Layout", layout_row)
        form.addRow("SR opacity", self.opacity)
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addWidget(self.table)
        layout.addWidget(self.fov_label)
        layout.addWidget(self.caption)
        layout.addStretch(1)
        self.scroll_area = _dock.scroll_contents(self, content)
        self._fit_table()

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._start_readout)

        self.mode_box.currentTextChanged.connect(lambda _: self.arrange())
        self.arrange_button.clicked.connect(lambda: self.arrange())
        self.pair_box.activated.connect(lambda _: self._on_pair_chosen())
        self.opacity.valueChanged.connect(self._on_opacity)
        camera = _layers._camera(self.viewer)
        camera.events.center.connect(self.schedule_update)
        camera.events.zoom.connect(self.schedule_update)
        canvas = getattr(self.viewer, "canvas", None)
        if canvas is not None:
            canvas.events.size.connect(self.schedule_update)
        self._grid().events.enabled.connect(self._on_grid_enabled)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._refresh_pairs)
        for layer in self.viewer.layers:
            self._watch(layer)
        self._refresh_pairs()

    # ---------------------------------------------------------------- public API
    @property
    def pair(self) -> _layers.LayerPair | None:
        """The pair being compared."""
        pid = self.pair_box.currentData()
        return _layers.find_pair(self.viewer.layers, pid) if pid else None

    @property
    def columns(self) -> list[str]:
        """The comparisons the table shows, left to right (`Readout.columns` keys)."""
        return list(self._columns)

    def arrange(self, mode: str | None = None) -> None:
        """Lay out the pair: 'side by side' (grid, LR | SR | HR) or 'overlay' (SR over HR).

        Side by side, the layer list reads LR, SR, HR from the top, as the grid does
        from the left (napari's grid with a negative stride puts the topmost layer
        first), and each cell is captioned with its layer's name. The camera (centre
        and zoom) is kept; only the first layout of a pair fits the image to the view.
        """
        if mode is not None and mode != self.mode_box.currentText():
            self.mode_box.setCurrentText(mode)  # comes back here through the signal
            return
        pair = self.pair
        if pair is None or pair.sr is None:
            return
        first = self._arranged_pair != pair.pair_id
        self._arranged_pair = pair.pair_id
        layers = self.viewer.layers
        grid = self._grid()
        camera = _layers._camera(self.viewer)
        center, zoom = tuple(camera.center), float(camera.zoom)
        side_by_side = self.mode_box.currentText() == MODES[0]
        if side_by_side:
            members = pair.layers  # LR, SR, HR: the grid's cells from the left
            stacking = members[::-1]  # LR ends on top of the list
        else:
            members = [x for x in (pair.lr, pair.hr, pair.sr) if x]
            stacking = members  # SR drawn over HR
        self._arranging = True
        try:
            for layer in stacking:  # move to the top, in order
                layers.move(layers.index(layer), len(layers))
            self._restore_hidden()
            if side_by_side:
                self._hidden = [x for x in layers if x.visible and x not in members]
                for layer in [*self._hidden, *members]:
                    layer.visible = layer in members
                pair.sr.opacity = 1.0
                grid.stride = -1
                grid.shape = (1, len(members))
                grid.enabled = True
            else:
                grid.enabled = False
                for layer in members:
                    layer.visible = layer != pair.lr or pair.hr is None
                pair.sr.opacity = self.opacity.value() / 100
            for layer in members:
                _layers.show_caption(layer)
        finally:
            self._arranging = False
        self.opacity.setEnabled(not side_by_side)
        if first:  # a new pair: fit the image in one view
            self.viewer.reset_view()
        else:  # keep what the user is looking at
            camera.center, camera.zoom = center, zoom
        self.schedule_update()

    def schedule_update(self, event: Any = None) -> None:
        """Recompute the readouts once the camera has been still for DEBOUNCE_MS."""
        self._generation += 1
        if not self._closed:
            self._timer.start()

    @property
    def busy(self) -> bool:
        """True while a readout is being computed or waits for the debounce."""
        return self._worker is not None or self._timer.isActive() or self._pending

    # ---------------------------------------------------------------- readouts
    def _start_readout(self) -> None:
        if self._closed:
            return
        if self._worker is not None:  # one at a time; the newest request runs next
            self._pending = True
            return
        self._pending = False
        pair = self.pair
        box = _layers.fov_box(self.viewer, pair, max_side=self.max_crop) if pair else None
        if pair is None or box is None:
            self.fov_label.setText(
                "no SR layer yet: use Enhance" if pair is None else "the view misses the image"
            )
            return
        mode_hr = pair.hr is not None
        self._set_columns([SR_VS_HR, BICUBIC_VS_HR, "gain"] if mode_hr else [CONSISTENCY])
        self.fov_label.setText(f"{_where(box)} (computing...)")
        lr0 = _layers.layer_levels(pair.lr)[0] if pair.lr is not None else self._lr_from_sr(pair)
        hr0 = _layers.layer_levels(pair.hr)[0] if mode_hr else None
        sr0 = _layers.layer_levels(pair.sr)[0]
        self._partial = Readout(self._generation, box)

        from napari.qt.threading import create_worker

        worker = create_worker(
            _readout_gen, self._generation, box, sr0, lr0, hr0, _start_thread=False
        )
        worker.yielded.connect(self._on_column)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        _workers.start(worker, owner=self)

    @staticmethod
    def _lr_from_sr(pair: _layers.LayerPair) -> Any:
        """SR level 1 is LR level 0 in the engine's pyramid: use it if the LR layer is gone."""
        levels = _layers.layer_levels(pair.sr)
        h, w = levels[0].shape[:2]
        if len(levels) > 1 and levels[1].shape[:2] == (h // pair.scale, w // pair.scale):
            return levels[1]
        return None

    def _on_column(self, column: ReadoutColumn | str) -> None:
        from napari.utils.notifications import show_error

        if isinstance(column, str):  # an error message
            self.fov_label.setText(f"readout failed: {column}")
            show_error(f"Compare: {column}")
            return
        part = self._partial
        if part is None or not column.generation == part.generation == self._generation:
            return  # the view moved on: a newer readout is coming
        part.columns[column.name] = column.values
        self._show(part)

    def _on_finished(self) -> None:
        self._worker = None
        part = self._partial
        if part is not None and part.generation == self._generation and part.columns:
            self.last_readout = part
            self.fov_label.setText(_where(part.box))
            self.readout_ready.emit(part)
        if self._pending:
            self._start_readout()

    def _show(self, readout: Readout) -> None:
        for col, name in enumerate(self._columns):
            values = readout.columns.get(name)
            if name == "gain":
                values = _gain(readout.columns.get(SR_VS_HR), readout.columns.get(BICUBIC_VS_HR))
            for row, (key, _) in enumerate(METRICS):
                value = None if values is None else values.get(key)
                item = QTableWidgetItem(_fmt(key, value, signed=name == "gain"))
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setToolTip(f"{COLUMN_LABELS[name][0]}, {METRICS[row][1]}")
                if name == "gain" and value is not None and _fmt(key, abs(value)) != _fmt(key, 0.0):
                    item.setForeground(QColor("#4caf50" if value > 0 else "#e57373"))
                self.table.setItem(row, col, item)

    # ---------------------------------------------------------------- the table
    def _setup_table(self) -> None:
        table = self.table
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for row, (key, label) in enumerate(METRICS):
            item = QTableWidgetItem(label)
            item.setToolTip(METRIC_TIPS[key])
            table.setVerticalHeaderItem(row, item)
        rows, columns = table.verticalHeader(), table.horizontalHeader()
        assert rows is not None and columns is not None
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        rows.setDefaultSectionSize(table.fontMetrics().height() + 8)
        columns.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)

    def _set_columns(self, names: list[str]) -> None:
        """Show these comparisons as columns, and only the metric rows they have."""
        if names == self._columns:
            return
        self._columns = list(names)
        table = self.table
        table.clearContents()
        table.setColumnCount(len(names))
        for col, name in enumerate(names):
            label, tip = COLUMN_LABELS[name]
            item = QTableWidgetItem(label)
            item.setToolTip(tip)
            table.setHorizontalHeaderItem(col, item)
        for row, (key, _) in enumerate(METRICS):
            table.setRowHidden(row, names == [CONSISTENCY] and key not in CONSISTENCY_METRICS)
        self.caption.setText(CONSISTENCY_CAPTION if names == [CONSISTENCY] else HR_CAPTION)
        self.caption.setToolTip(COLUMN_LABELS[names[0]][1])
        self._fit_table()

    def _fit_table(self) -> None:
        """Size the table to show every header and visible row without scrolling."""
        table = self.table
        fm = table.fontMetrics()
        header, rows = table.horizontalHeader(), table.verticalHeader()
        assert header is not None and rows is not None
        pad = fm.horizontalAdvance("M")
        widest_value = fm.horizontalAdvance("+0.0000")
        widths = [
            max(fm.horizontalAdvance(_header_text(table, c)), widest_value) + pad
            for c in range(table.columnCount())
        ]
        header.setMinimumSectionSize(min(widths) if widths else 40)
        labels = max(fm.horizontalAdvance(label) for _, label in METRICS) + pad
        rows.setMinimumWidth(labels)
        frame = 2 * table.frameWidth()
        table.setMinimumWidth(labels + sum(widths) + frame)
        shown = [r for r in range(table.rowCount()) if not table.isRowHidden(r)]
        height = header.sizeHint().height() + sum(table.rowHeight(r) for r in shown) + frame
        table.setFixedHeight(height)
        if hasattr(self, "scroll_area"):  # as wide as the contents need
            _dock.fit_width(self.scroll_area)

    def changeEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        super().changeEvent(event)
        if event.type() in (QEvent.Type.StyleChange, QEvent.Type.FontChange):
            self._fit_table()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        """All of the contents, so a dock area gives the readouts room before the stretch."""
        content = self.scroll_area.widget()
        assert content is not None
        inner = content.sizeHint()
        return QSize(self.scroll_area.minimumWidth(), inner.height())

    # ---------------------------------------------------------------- layers and pairs
    def _grid(self) -> Any:
        return _layers.grid_of(self.viewer)

    def _side_by_side_shown(self) -> bool:
        return (
            self._arranged_pair is not None
            and self.mode_box.currentText() == MODES[0]
            and self._grid().enabled
        )

    def _on_grid_enabled(self, event: Any = None) -> None:
        """napari's grid was switched by someone else: follow it (grid on = side by side)."""
        self.schedule_update()
        if self._arranging or self.pair is None or self._arranged_pair is None:
            return
        wanted = MODES[0] if self._grid().enabled else MODES[1]
        if self.mode_box.currentText() != wanted:
            self.mode_box.setCurrentText(wanted)  # arranges through the signal

    def _watch(self, layer: Any) -> None:
        layer.events.data.connect(self._on_layer_changed)
        layer.events.metadata.connect(self._on_layer_changed)
        layer.events.name.connect(self._on_layer_changed)

    def _on_inserted(self, event: Any) -> None:
        self._watch(event.value)
        self._refresh_pairs()
        if self._side_by_side_shown():  # once its pair tag is set (right after insertion)
            QTimer.singleShot(0, self._hide_extra_layers)

    def _hide_extra_layers(self) -> None:
        """Side by side shows the pair only: hide layers added meanwhile (shown again later)."""
        pair = self.pair
        if pair is None or not self._side_by_side_shown():
            return
        for layer in self.viewer.layers:
            if layer.visible and layer not in pair.layers:
                layer.visible = False
                self._hidden.append(layer)

    def _on_layer_changed(self, event: Any) -> None:
        pid = self.pair_box.currentData()
        source_pid = _layers.pair_id_of(event.source)
        if source_pid is not None:
            if source_pid != pid or self.pair_box.findData(source_pid) < 0:
                self._refresh_pairs()
            else:
                self.schedule_update()

    def _refresh_pairs(self, event: Any = None) -> None:
        pairs = _layers.find_pairs(self.viewer.layers)
        current = self.pair_box.currentData()
        with_sr = [p for p in pairs.values() if p.sr is not None]
        self.pair_box.blockSignals(True)
        self.pair_box.clear()
        for p in with_sr:
            self.pair_box.addItem(p.sr.name, p.pair_id)
        index = self.pair_box.findData(current) if current else -1
        self.pair_box.setCurrentIndex(index if index >= 0 else self.pair_box.count() - 1)
        self.pair_box.blockSignals(False)
        if self.pair_box.currentData() != current:
            self._on_pair_changed()

    def _on_pair_changed(self) -> None:
        if self._arranged_pair is None and self.pair is not None:
            self.arrange()  # first sight of a pair: lay it out
        self.schedule_update()

    def _on_pair_chosen(self) -> None:
        """The user picked a pair: lay it out (its layers may be hidden, e.g. side by side)."""
        self.arrange()
        self.schedule_update()

    def _restore_hidden(self) -> None:
        for layer in self._hidden:
            if layer in self.viewer.layers:
                layer.visible = True
        self._hidden = []

    def _on_opacity(self, value: int) -> None:
        pair = self.pair
        if pair is not None and pair.sr is not None and self.mode_box.currentText() == MODES[1]:
            pair.sr.opacity = value / 100

    # ---------------------------------------------------------------- closing
    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self._fit_table()  # napari's style sheet (fonts) applies once docked
        _workers.stop_on_close(self, self._on_viewer_closed)
        if self.room is None:  # the first time it is shown: docked by now
            self.room = False
            QTimer.singleShot(0, self._claim_room)

    def _claim_room(self) -> None:
        """Once docked: take the height the readouts need from the docks above (a new
        dock otherwise gets only what they leave over)."""
        _dock.claim_height(self, self.sizeHint().height(), share=0.6)
        self.room = True

    def _on_viewer_closed(self) -> None:
        """The viewer window closed: no more readouts; end the one being computed."""
        self._closed = True
        self._timer.stop()
        self._pending = False
        _workers.stop(self)


def _where(box: _layers.CropBox) -> str:
    """'view: 420 x 420 HR px at x 2030, y 1180' (or 'centre of the view: ...')."""
    h, w = box.shape
    where = "centre of the view" if box.capped else "view"
    return f"{where}: {w} x {h} HR px at x {box.x0}, y {box.y0}"


def _header_text(table: QTableWidget, column: int) -> str:
    """The label of a column (`_set_columns` gives every column a header item)."""
    item = table.horizontalHeaderItem(column)
    assert item is not None
    return item.text()


def _readout_gen(
    generation: int, box: _layers.CropBox, sr0: Any, lr0: Any, hr0: Any
) -> Generator[ReadoutColumn | str, None, None]:
    """The worker: `compute_readouts`, with a failure turned into a message."""
    try:
        yield from compute_readouts(generation, box, sr0, lr0, hr0)
    except Exception as exc:  # noqa: BLE001 - shown as a notification
        log.debug("readout failed", exc_info=True)
        yield str(exc) or type(exc).__name__


def _gain(sr: dict | None, base: dict | None) -> dict[str, float | None] | None:
    """SR minus baseline, signed so that positive is better (RRMSE: baseline minus SR)."""
    if sr is None or base is None:
        return None
    out: dict[str, float | None] = {}
    for key, _ in METRICS:
        a, b = sr.get(key), base.get(key)
        if a is None or b is None or not all(map(_finite, (a, b))):
            out[key] = None
        else:
            out[key] = (b - a) if key in LOWER_IS_BETTER else (a - b)
    return out


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _fmt(key: str, value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    if not _finite(value):
        return str(value)
    sign = "+" if signed else ""
    return f"{value:{sign}.2f}" if key == "psnr" else f"{value:{sign}.4f}"
