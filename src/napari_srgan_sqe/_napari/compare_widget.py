"""The "Compare" widget: LR | SR | HR side by side or overlaid, with quality readouts.

Readouts are for the field of view: the part of SR level 0 (the HR pixel grid) under
the camera, its centre `MAX_CROP` px at most (`_layers.fov_box`). After the camera
settles (debounced), `compute_readouts` runs in a thread worker on arrays captured on
the GUI thread: it crops SR, HR and LR level 0, and yields one `ReadoutColumn` per
comparison (SR vs HR, bicubic(LR) vs HR; with no HR the consistency D_s(SR) vs LR).
Every request carries a generation number; a column of an older generation is
dropped, so a slow result never overwrites a newer view.

Honest SR (docs/honest-sr.md): "Where SR departs from the scan" adds a colour-mapped
map layer of the pair's SR (`inference.diagnostics.LiveDeparture`: how much SR
changes when the slide is turned, computed in the background for the view from the
SR the viewer computed); "Uncertainty (N samples)" super-resolves the view with N
seeds in a thread worker and adds the spread of the samples as a layer. Both layers
carry `metadata["srgan_sqe_map"] = {"kind": "departure" | "uncertainty", "pair_id"}`,
lie on SR's pixel grid, sit next to SR in the side-by-side grid and over it in the
overlay, and have a legend in the widget that reads their contrast limits.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_srgan_sqe._napari import _dock, _layers, _workers
from napari_srgan_sqe.metrics import METRICS as METRIC_TABLE
from napari_srgan_sqe.metrics import format_metric, metric_gain

__all__ = ["MAP_KEY", "CompareWidget", "Readout", "ReadoutColumn", "compute_readouts", "map_kind"]

log = logging.getLogger(__name__)

METRICS = tuple((m.key, m.label) for m in METRIC_TABLE)
"""(key, row label) of the readout table's rows: `napari_srgan_sqe.metrics.METRICS`."""
SR_VS_HR, BICUBIC_VS_HR, CONSISTENCY = "SR vs HR", "bicubic vs HR", "D_s(SR) vs LR"
"""Readout column names (`Readout.columns` keys); the table shows `COLUMN_LABELS`."""
CONSISTENCY_METRICS = ("psnr", "ssim")
METRIC_TIPS = {m.key: m.tip for m in METRIC_TABLE}
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

MAP_KEY = "srgan_sqe_map"
"""Layer metadata key of the map layers: {"kind": "departure" | "uncertainty", "pair_id"}."""
DEPARTURE, UNCERTAINTY = "departure", "uncertainty"
MAP_ROLES = {DEPARTURE: "Departure", UNCERTAINTY: "Uncertainty"}
DEPARTURE_CLEAR = 1.5
"""Departure (grey levels) at and below which the map is clear: about the 90th
percentile on the held-out 40x images (1.4 to 1.7 for the bundled models) and just
under the median over tissue of the bundled 20x sample (1.7) (docs/honest-sr.md);
full colour at `diagnostics.DEPARTURE_LIMIT`."""
MAP_OPACITY = 0.85
SPREAD_MAX_SIDE = 2048
"""Largest side (HR px) of the view region the uncertainty samples cover (its centre)."""
DEPARTURE_TIP = (
    "Colours the parts of SR that the scan does not decide. The SR is computed again "
    "with the slide turned by 90, 180 and 270 degrees: where the scan decides the "
    "detail, every turn gives the same picture and the map stays clear; where the "
    "model has to make detail up, the turns disagree and the map turns teal to blue. "
    "On held-out images SR's errors are largest where the map is blue, but the colour "
    "is not the size of the error, and a clear map does not prove SR right."
)
UNCERTAINTY_TIP = (
    "For models that draw a different picture for each random seed (stochastic "
    "models): super-resolves the part of the slide in view N times with N seeds and "
    "colours each pixel by how much the pictures differ. Where they differ, the model "
    "is guessing. A deterministic model gives the same picture every time: its map is "
    "0 everywhere. Runs in the background; Stop ends it after the current sample."
)
DEPARTURE_LEGEND = (
    "Clear: SR looks the same whichever way the slide is turned, so the scan decides "
    "it. Teal to blue: SR changes by {lo} to {hi} or more grey levels (of 255) when "
    "the slide is turned: detail the model made up, where its errors are largest. "
    "Not the size of the error. Computed for the view as you look."
)
UNCERTAINTY_LEGEND = (
    "How much the {n} samples differ, per LR pixel (the standard deviation of each HR "
    "pixel, in grey levels of 255, averaged over the LR pixel): clear at {lo} or less, "
    "teal to blue up to {hi} or more. The scale spans this view's calmest 5% to its "
    "wildest 0.5%, so the map shows where the model guesses most; the numbers say how "
    "much. Blue: the model is guessing."
)
UNCERTAINTY_RANGE = (0.05, 0.995)
"""Quantiles of the view's spread at which the uncertainty colour scale starts and ends."""


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
    uncertainty_ready = Signal(object)
    """Emitted with the uncertainty layer when the spread of the samples is shown."""

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

        # honest SR: the departure map and the uncertainty of stochastic models
        self._live_maps: weakref.WeakKeyDictionary[Any, _LiveMap] = weakref.WeakKeyDictionary()
        self._spread: _SpreadJob | None = None
        self.last_spread: Any = None
        """The last `SpreadResult` shown (None before the first)."""
        self.departure_box = QCheckBox("Where SR departs from the scan")
        self.departure_box.setToolTip(DEPARTURE_TIP)
        self.save_map_button = QPushButton("Save...")
        self.save_map_button.setToolTip(
            "Save the departure map of the view as a TIFF (32-bit grey levels, one value "
            "per LR pixel), computed for the view if it is not yet"
        )
        self.departure_legend = _Legend("Departure from the scan", DEPARTURE_LEGEND)
        self.samples_box = QSpinBox()
        self.samples_box.setRange(2, 32)
        self.samples_box.setValue(4)
        self.samples_box.setToolTip("N: how many samples (random seeds) to draw of the view")
        self.uncertainty_button = QPushButton()
        self.uncertainty_button.setToolTip(UNCERTAINTY_TIP)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("End the sampling after the current sample")
        self.stop_button.setEnabled(False)
        self.uncertainty_label = QLabel()
        self.uncertainty_label.setWordWrap(True)
        self.uncertainty_legend = _Legend("Uncertainty (spread of samples)", UNCERTAINTY_LEGEND)
        self._on_samples(self.samples_box.value())

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
        departure_row = QHBoxLayout()
        departure_row.addWidget(self.departure_box, 1)
        departure_row.addWidget(self.save_map_button)
        layout.addLayout(departure_row)
        layout.addWidget(self.departure_legend)
        sampling_row = QHBoxLayout()
        sampling_row.addWidget(self.uncertainty_button, 1)
        sampling_row.addWidget(self.samples_box)
        sampling_row.addWidget(self.stop_button)
        layout.addLayout(sampling_row)
        layout.addWidget(self.uncertainty_label)
        layout.addWidget(self.uncertainty_legend)
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
        self.viewer.events.theme.connect(self._sync_legend_backdrops)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._refresh_pairs)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.departure_box.toggled.connect(lambda on: self.show_departure(on))
        self.save_map_button.clicked.connect(lambda: self._ask_save_departure())
        self.samples_box.valueChanged.connect(self._on_samples)
        self.uncertainty_button.clicked.connect(lambda: self.run_uncertainty())
        self.stop_button.clicked.connect(lambda: self.stop_uncertainty())
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
            members = self._members(pair)  # LR, SR, maps, HR: the grid's cells from the left
            stacking = members[::-1]  # LR ends on top of the list
        else:
            maps = self._map_layers(pair.pair_id)
            members = [x for x in (pair.lr, pair.hr, pair.sr) if x] + maps
            stacking = members  # SR drawn over HR, the maps over SR
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
        self._sync_legend_backdrops()
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
        pair = self.pair
        box = _layers.fov_box(self.viewer, pair, max_side=self.max_crop) if pair else None
        self._clear_values()  # the numbers shown are of a view the user has left
        if self._worker is not None:  # one at a time; the newest request runs next
            self._pending = True
            if box is not None:
                self.fov_label.setText(f"{_where(box, pair)} (computing...)")
            return
        self._pending = False
        if pair is None or box is None:
            self.fov_label.setText(
                "no SR layer yet: use Enhance" if pair is None else "the view misses the image"
            )
            return
        mode_hr = pair.hr is not None
        self._set_columns([SR_VS_HR, BICUBIC_VS_HR, "gain"] if mode_hr else [CONSISTENCY])
        self.fov_label.setText(f"{_where(box, pair)} (computing...)")
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
        if isinstance(column, str):  # an error message
            self.fov_label.setText(f"readout failed: {column}")
            _dock.notify_error(f"Compare: {column}")
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
            self.fov_label.setText(_where(part.box, self.pair))
            self.readout_ready.emit(part)
        if self._pending:
            self._start_readout()

    def _clear_values(self) -> None:
        """Empty every value cell (row and column headers stay)."""
        for row in range(self.table.rowCount()):
            for col in range(self.table.columnCount()):
                self.table.setItem(row, col, QTableWidgetItem(""))

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

    def _sync_legend_backdrops(self, event: Any = None) -> None:
        """Side by side, a map has its own cell over the canvas; else it lies over SR,
        whose background (glass) is white."""
        backdrop = (1.0, 1.0, 1.0)
        if self._side_by_side_shown():
            try:
                from napari.utils.theme import get_theme

                canvas = get_theme(self.viewer.theme).canvas.as_rgb_tuple()
                backdrop = tuple(v / 255.0 for v in canvas[:3])
            except Exception:  # noqa: BLE001 - an unknown theme: napari's default canvas
                backdrop = (0.0, 0.0, 0.0)
        for legend in (self.departure_legend, self.uncertainty_legend):
            legend.set_backdrop(backdrop)

    def _on_grid_enabled(self, event: Any = None) -> None:
        """napari's grid was switched by someone else: follow it (grid on = side by side)."""
        self.schedule_update()
        self._sync_legend_backdrops()
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
        members = self._members(pair)
        for layer in self.viewer.layers:
            if layer.visible and layer not in members:
                layer.visible = False
                self._hidden.append(layer)

    def _on_layer_changed(self, event: Any) -> None:
        pid = self.pair_box.currentData()
        source_pid = _layers.pair_id_of(event.source)
        if source_pid is not None:
            is_sr = _layers.role_of(event.source) == "sr"
            if is_sr and event.type in ("data", "metadata"):
                self._follow_sr(event.source)
            index = self.pair_box.findData(source_pid)
            if is_sr and event.type == "name" and index >= 0:  # the Pair box names the SR layer
                self.pair_box.setItemText(index, event.source.name)
            if source_pid != pid or index < 0:
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
        self._sync_map_controls()

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

    # ---------------------------------------------------------------- honest SR: the maps
    def _map_layers(self, pair_id: str | None, kind: str | None = None) -> list[Any]:
        """The map layers of a pair (departure first, then uncertainty)."""
        if pair_id is None:
            return []
        found = [
            x
            for x in self.viewer.layers
            if _map_tag(x).get("pair_id") == pair_id and map_kind(x) in MAP_ROLES
        ]
        order = list(MAP_ROLES)
        found.sort(key=lambda x: order.index(str(map_kind(x))))
        return [x for x in found if kind is None or map_kind(x) == kind]

    def _members(self, pair: _layers.LayerPair) -> list[Any]:
        """The layers of the side-by-side grid, left to right: LR, SR, the maps, HR."""
        head = [x for x in (pair.lr, pair.sr) if x is not None]
        return head + self._map_layers(pair.pair_id) + ([pair.hr] if pair.hr is not None else [])

    def _map_layer(self, kind: str) -> Any:
        pair = self.pair
        found = self._map_layers(pair.pair_id, kind) if pair is not None else []
        return found[0] if found else None

    @property
    def departure_layer(self) -> Any:
        """The departure layer of the pair being compared, or None."""
        return self._map_layer(DEPARTURE)

    @property
    def uncertainty_layer(self) -> Any:
        """The uncertainty layer of the pair being compared, or None."""
        return self._map_layer(UNCERTAINTY)

    def departure_of(self, layer: Any) -> Any:
        """The `LiveDeparture` behind a departure layer (None for other layers)."""
        state = self._live_maps.get(_real(layer))
        return state.live if state is not None else None

    def show_departure(self, on: bool = True) -> Any:
        """Add (on) or remove (off) the departure layer of the pair; returns the layer.

        Refused, with the reason in the widget, when the pair's SR layer was not made
        by this plugin or its model is stochastic (then use Uncertainty).
        """
        pair = self.pair
        layer = self.departure_layer
        if not on:
            if layer is not None:
                self._remove_layer(layer)
            self._sync_map_controls()
            return None
        if layer is not None:
            self._sync_map_controls()
            return layer
        pyramid = _layers.pyramid_of(pair.sr) if pair is not None and pair.sr is not None else None
        why = _departure_refusal(pyramid)
        if why is not None or pyramid is None or pair is None or pair.sr is None:
            self.uncertainty_label.setText(why or "no SR layer yet: use Enhance")
            self._sync_map_controls()
            return None
        from napari_srgan_sqe.inference.diagnostics import DEPARTURE_LIMIT, LiveDeparture

        live = LiveDeparture(pyramid)
        layer = self.viewer.add_image(
            live.levels,
            multiscale=True,
            name=_map_name(DEPARTURE, pair, pyramid.model.name),
            colormap=_map_colormap(),
            contrast_limits=(DEPARTURE_CLEAR, DEPARTURE_LIMIT),
            opacity=MAP_OPACITY,
            blending="translucent",
            metadata={MAP_KEY: {"kind": DEPARTURE, "pair_id": pair.pair_id}},
            **_like(pair.sr),
        )
        self._live_maps[_real(layer)] = _LiveMap(layer, live, self._on_map_failed)
        self._maps_changed()
        return layer

    def _on_map_failed(self, message: str) -> None:
        self.uncertainty_label.setText(f"departure map failed: {message}")
        _dock.notify_error(f"Compare: departure map failed: {message}")

    def _follow_sr(self, sr: Any) -> None:
        """The SR layer's model or pyramid changed: its departure map follows."""
        pid = _layers.pair_id_of(sr)
        pair = _layers.find_pair(self.viewer.layers, pid) if pid else None
        pyramid = _layers.pyramid_of(sr)
        for layer in self._map_layers(pid, DEPARTURE):
            why = _departure_refusal(pyramid)
            if why is not None or pair is None:
                self.uncertainty_label.setText(f"departure map removed: {why}")
                QTimer.singleShot(0, lambda x=layer: self._remove_layer(x))
                continue
            state = self._live_maps.get(_real(layer))
            if state is None or state.live.pyramid is not pyramid:  # a new SR pyramid
                from napari_srgan_sqe.inference.diagnostics import LiveDeparture

                if state is not None:
                    state.close()
                live = LiveDeparture(pyramid)
                self._live_maps[_real(layer)] = _LiveMap(layer, live, self._on_map_failed)
                layer.data = live.levels
            layer.name = _map_name(DEPARTURE, pair, pyramid.model.name)
            layer.refresh()

    def _remove_layer(self, layer: Any) -> None:
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _on_removed(self, event: Any) -> None:
        layer = event.value
        state = self._live_maps.pop(_real(layer), None)
        if state is not None:
            state.close()
        if _layers.role_of(layer) == "sr":  # the maps of a removed SR layer go with it
            for other in self._map_layers(_layers.pair_id_of(layer)):
                QTimer.singleShot(0, lambda x=other: self._remove_layer(x))
        if map_kind(layer) in MAP_ROLES:
            try:
                self._maps_changed()
            except RuntimeError as exc:  # viewer.close() stops napari's slicer before it
                # removes the layers: re-arranging the grid then cannot slice, nor matters
                if "after shutdown" not in str(exc):
                    raise

    def _maps_changed(self) -> None:
        """A map layer came or went: controls, legends, and the grid's cells."""
        self._sync_map_controls()
        if self._side_by_side_shown() or (
            self._arranged_pair is not None and self.mode_box.currentText() == MODES[1]
        ):
            self.arrange()

    def _sync_map_controls(self) -> None:
        """Checkbox, buttons and legends of the pair being compared."""
        pair = self.pair
        pyramid = _layers.pyramid_of(pair.sr) if pair is not None and pair.sr is not None else None
        departure, uncertainty = self.departure_layer, self.uncertainty_layer
        self.departure_box.blockSignals(True)
        self.departure_box.setChecked(departure is not None)
        self.departure_box.blockSignals(False)
        why = _departure_refusal(pyramid) if pair is not None else "no SR layer yet: use Enhance"
        self.departure_box.setEnabled(why is None or departure is not None)
        self.departure_box.setToolTip(
            DEPARTURE_TIP if why is None else f"{DEPARTURE_TIP}\n\n({why})"
        )
        self.save_map_button.setEnabled(departure is not None)
        self.departure_legend.set_layer(departure)
        running = self._spread is not None
        self.uncertainty_button.setEnabled(pyramid is not None and not running)
        self.stop_button.setEnabled(running)
        self.samples_box.setEnabled(not running)
        n = _map_tag(uncertainty).get("samples", self.samples_box.value()) if uncertainty else 0
        self.uncertainty_legend.set_layer(uncertainty, n=n)

    def _on_samples(self, n: int) -> None:
        self.uncertainty_button.setText(f"Uncertainty ({n} samples)")

    # ---------------------------------------------------------------- saving the departure map
    def _ask_save_departure(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save the departure map of the view",
            self.departure_file_name(),
            "TIFF (*.tif *.tiff)",
        )
        if path:
            self.save_departure(path)

    def departure_file_name(self) -> str:
        """'departure-<slide>-x<X>-y<Y>.tif' for the view (LR px of its top left), so
        that maps of several views can be told apart; 'departure.tif' without a view."""
        import re

        pair = self.pair
        box = _layers.fov_box(self.viewer, pair, max_side=SPREAD_MAX_SIDE) if pair else None
        if pair is None or pair.sr is None or box is None:
            return "departure.tif"
        slide = re.sub(r"[^A-Za-z0-9._-]+", "_", _layers.slide_name(pair.sr)).strip("_")
        y0, _, x0, _ = box.lr
        return f"departure-{slide + '-' if slide else ''}x{x0}-y{y0}.tif"

    def save_departure(self, path: Any, *, wait: bool = False) -> bool:
        """Write the departure map of the view (its centre `SPREAD_MAX_SIDE` HR px at
        most) as a float32 TIFF, one value per LR pixel (`LiveDeparture.write_tiff`: the
        map the viewer computed, or the exact map where it is incomplete), in a thread
        worker (`wait`: here, at once). False when there is no map or no view."""
        pair, layer = self.pair, self.departure_layer
        live = self.departure_of(layer) if layer is not None else None
        box = _layers.fov_box(self.viewer, pair, max_side=SPREAD_MAX_SIDE) if pair else None
        if live is None or box is None or pair is None or pair.sr is None:
            self.uncertainty_label.setText("nothing to save: show the departure map of a view")
            return False
        y0, y1, x0, x1 = box.lr
        region = (x0, y0, x1 - x0, y1 - y0)
        mpp = _um_per_px(pair.sr)
        mpp_lr = mpp * box.scale if mpp else None

        source = _layers.slide_name(pair.sr) or None

        def save() -> Any:
            return live.write_tiff(path, region, mpp=mpp_lr, source=source)

        if wait:
            self._on_saved(save())
            return True
        from napari.qt.threading import create_worker

        worker = create_worker(save, _start_thread=False)
        worker.returned.connect(self._on_saved)
        worker.errored.connect(lambda exc: self._on_map_failed(f"saving failed: {exc}"))
        self.uncertainty_label.setText(f"saving the departure map of the view to {path} ...")
        _workers.start(worker, owner=self)
        return True

    def _on_saved(self, path: Any) -> None:
        self.uncertainty_label.setText(f"departure map of the view saved: {path}")

    # ---------------------------------------------------------------- uncertainty
    @property
    def uncertainty_running(self) -> bool:
        """True while samples of the view are being drawn."""
        return self._spread is not None

    def run_uncertainty(self, samples: int | None = None) -> bool:
        """Draw N samples (`samples`, else the spin box's N) of the view with the SR
        layer's model, in a thread worker, and show their spread as a layer.

        The view is its centre `SPREAD_MAX_SIDE` HR px at most; the seeds are those
        after the SR layer's own (0, 1, ... by default). `uncertainty_ready` fires with
        the layer when it is shown. False when it cannot start.
        """
        if self._spread is not None:
            return False
        if samples is not None:
            self.samples_box.setValue(int(samples))
        n = self.samples_box.value()
        pair = self.pair
        pyramid = _layers.pyramid_of(pair.sr) if pair is not None and pair.sr is not None else None
        if pyramid is None or pair is None:
            self.uncertainty_label.setText("no SR layer made by Enhance to sample")
            return False
        box = _layers.fov_box(self.viewer, pair, max_side=SPREAD_MAX_SIDE)
        if box is None:
            self.uncertainty_label.setText("the view misses the image")
            return False
        s = box.scale
        ox, oy = pyramid.region[:2] if pyramid.region is not None else (0, 0)
        y0, y1, x0, x1 = box.lr
        region = (x0 + int(ox), y0 + int(oy), x1 - x0, y1 - y0)
        base = getattr(pyramid.predictor, "seed", None) or 0
        seeds = tuple(range(int(base), int(base) + n))
        model = pyramid.model
        from napari.qt.threading import create_worker
        from napari.utils import progress

        stop = threading.Event()
        worker = create_worker(
            _spread_gen,
            pyramid.lr_levels[0],
            model,
            region,
            seeds,
            str(pyramid.predictor.device),
            int(pyramid.tile),
            stop,
            (_layers.layer_levels(pair.hr)[0], box) if pair.hr is not None else None,
            _start_thread=False,
        )
        bar = progress(total=n, desc=f"Uncertainty: {n} samples of the view")
        self._spread = _SpreadJob(worker, stop, box, pair.pair_id, n, model.name, bar)
        worker.yielded.connect(self._on_spread_event)
        worker.finished.connect(self._on_spread_finished)
        w, h = region[2] * s, region[3] * s
        note = "" if model.descriptor.stochastic else " (deterministic model: expect 0)"
        self.uncertainty_label.setText(f"sampling {w} x {h} HR px: 0 of {n} done{note}")
        self._sync_map_controls()
        _workers.start(worker, owner=self, stop=stop.set)
        return True

    def stop_uncertainty(self) -> None:
        """End the sampling after the current sample; nothing is shown."""
        job = self._spread
        if job is not None:
            job.stop.set()
            job.worker.quit()
            self.uncertainty_label.setText("stopping after the current sample ...")
            self.stop_button.setEnabled(False)

    def _on_spread_event(self, ev: Any) -> None:
        job = self._spread
        if job is None:
            return
        if isinstance(ev, int):
            self.uncertainty_label.setText(f"sampling the view: {ev} of {job.n} done")
            job.bar.update(ev - job.bar.n)  # last: napari's bar processes Qt events
        elif isinstance(ev, str):
            self.uncertainty_label.setText(f"uncertainty failed: {ev}")
            _dock.notify_error(f"Compare: uncertainty failed: {ev}")
        else:
            self._show_spread(ev, job)

    def _show_spread(self, result: Any, job: _SpreadJob) -> None:
        import numpy as np

        pair = _layers.find_pair(self.viewer.layers, job.pair_id)
        if pair is None or pair.sr is None:
            return
        values = result.pooled(job.box.scale)  # per LR pixel: the grain averages out
        lo, hi = _spread_limits(values)
        geometry = _like(pair.sr)
        scale = np.asarray(geometry["scale"], dtype=float)
        translate = np.asarray(geometry["translate"], dtype=float)
        geometry["translate"] = tuple(translate + np.array([job.box.y0, job.box.x0]) * scale)
        name = _map_name(UNCERTAINTY, pair, f"{result.model}, {job.n} samples")
        meta = {MAP_KEY: {"kind": UNCERTAINTY, "pair_id": job.pair_id, "samples": job.n}}
        old = self._map_layers(job.pair_id, UNCERTAINTY)
        if old:
            layer = old[0]
            layer.data = values
            layer.metadata = {**layer.metadata, **meta}
            layer.translate, layer.scale = geometry["translate"], geometry["scale"]
            layer.contrast_limits = (lo, hi)
            layer.name = name
            self._sync_map_controls()
        else:
            layer = self.viewer.add_image(
                values,
                name=name,
                colormap=_map_colormap(),
                contrast_limits=(lo, hi),
                opacity=MAP_OPACITY,
                blending="translucent",
                metadata=meta,
                **geometry,
            )
            self._maps_changed()
        self.last_spread = result
        if result.stochastic:
            text = (
                f"{job.n} samples of the view: mean spread {result.mean:.2f}, "
                f"max {result.max:.1f} grey levels"
            )
            if result.psnr:
                text += (
                    f"; PSNR against HR {result.psnr_mean:.2f} ± {result.psnr_sd:.2f} dB "
                    "(mean ± spread over the samples)"
                )
        else:
            text = (
                f"{result.model} is deterministic: all {job.n} samples are the same image, "
                f"so the spread is {result.max:g} everywhere; use the departure map for it"
            )
        self.uncertainty_label.setText(text)
        self.uncertainty_ready.emit(layer)

    def _on_spread_finished(self) -> None:
        job, self._spread = self._spread, None
        if job is not None:
            job.bar.close()
            if job.stop.is_set():
                shown = self.uncertainty_layer is not None
                self.uncertainty_label.setText(
                    "uncertainty stopped: the map shown is still the earlier one"
                    if shown
                    else "uncertainty stopped: nothing shown"
                )
        if _workers.alive(self):
            self._sync_map_controls()

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
        """The viewer window closed: no more readouts; end the one being computed, the
        sampling and the departure maps' background work."""
        self._closed = True
        self._timer.stop()
        self._pending = False
        _workers.stop(self)
        for state in list(self._live_maps.values()):
            state.close()


def _where(box: _layers.CropBox, pair: Any = None) -> str:
    """'view: 420 x 420 HR px at x 2030, y 1180' (or 'centre of the view: ...'); SR px
    when the pair has no HR layer (a slide enhanced as it is)."""
    h, w = box.shape
    where = "centre of the view" if box.capped else "view"
    grid = "SR" if pair is not None and pair.hr is None else "HR"
    return f"{where}: {w} x {h} {grid} px at x {box.x0}, y {box.y0}"


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
    return {key: metric_gain(key, sr.get(key), base.get(key)) for key, _ in METRICS}


_fmt = format_metric


# ------------------------------------------------------------------ honest SR: helpers
def _real(layer: Any) -> Any:
    """The layer behind a plugin's proxy (the viewer hands plugins proxies), for weak keys."""
    return getattr(layer, "__wrapped__", layer)


def _map_tag(layer: Any) -> dict:
    tag = getattr(layer, "metadata", {}).get(MAP_KEY) if layer is not None else None
    return tag if isinstance(tag, dict) else {}


def map_kind(layer: Any) -> str | None:
    """'departure' or 'uncertainty' for this widget's map layers, else None."""
    return _map_tag(layer).get("kind")


def _map_name(kind: str, pair: _layers.LayerPair, detail: str) -> str:
    """'Departure srgan-sqe-he-x4 · CMU-1', like `_layers.role_name`: the role first."""
    slide = _layers.slide_name(pair.sr) if pair.sr is not None else ""
    head = f"{MAP_ROLES[kind]} {detail}".strip()
    return f"{head} · {slide}" if slide else head


def _departure_refusal(pyramid: Any) -> str | None:
    """Why the departure map cannot be shown for this SR pyramid (None: it can)."""
    if pyramid is None:
        return "no SR layer made by Enhance"
    if pyramid.model.descriptor.stochastic:
        return (
            f"{pyramid.model.name} is stochastic: its samples differ anyway; use "
            "Uncertainty to see where it is guessing"
        )
    return None


def _like(layer: Any) -> dict[str, Any]:
    """scale, translate (and units) of `layer`'s last two axes: the same pixel grid."""
    out: dict[str, Any] = {
        "scale": tuple(float(v) for v in layer.scale[-2:]),
        "translate": tuple(float(v) for v in layer.translate[-2:]),
    }
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = tuple(str(u) for u in units[-2:])
    return out


def _um_per_px(layer: Any) -> float | None:
    """The layer's pixel size in um (`_layers.pixel_size_um`), None when unknown."""
    return _layers.pixel_size_um(layer.metadata, layer.scale, getattr(layer, "units", None))


_COLORMAP: Any = None


def _map_colormap() -> Any:
    """Clear at the low contrast limit, then teal to blue, more opaque as it rises: hues
    that H&E (pink, purple, white) does not have, so the map reads over any tissue and
    SR shows through where the map is low."""
    global _COLORMAP
    if _COLORMAP is None:
        from napari.utils.colormaps import Colormap

        _COLORMAP = Colormap(
            colors=[
                [0.0, 0.85, 0.75, 0.0],
                [0.0, 0.85, 0.75, 0.45],
                [0.0, 0.6, 1.0, 0.75],
                [0.05, 0.25, 1.0, 0.95],
            ],
            controls=[0.0, 0.3, 0.7, 1.0],
            name="srgan-sqe-map",
            display_name="clear-teal-blue",
        )
    return _COLORMAP


class _Legend(QWidget):
    """A map layer's legend: colour bar, its range, and what it means.

    The bar is drawn over what the map is seen over: white (the slide's background,
    where the map lies over SR) or, side by side, the canvas the map's own cell shows
    (black in napari's dark theme): `set_backdrop`.
    """

    BAR = (240, 14)

    def __init__(self, title: str, template: str) -> None:
        super().__init__()
        self.template = template
        self.backdrop: tuple[float, float, float] = (1.0, 1.0, 1.0)
        self.fields: dict[str, Any] = {}
        self._layer: Any = None
        self.title = QLabel(f"<b>{title}</b>")
        self.bar = QLabel()
        self.bar.setFixedSize(*self.BAR)
        self.low, self.high = QLabel(), QLabel()
        self.high.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.text = QLabel()
        self.text.setWordWrap(True)
        ends = QHBoxLayout()
        ends.setContentsMargins(0, 0, 0, 0)
        ends.addWidget(self.low)
        ends.addStretch(1)
        ends.addWidget(self.high)
        ends_box = QWidget()
        ends_box.setFixedWidth(self.BAR[0])
        ends_box.setLayout(ends)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setSpacing(2)
        for w in (self.title, self.bar, ends_box, self.text):
            layout.addWidget(w)
        self.setVisible(False)

    def set_layer(self, layer: Any, **fields: Any) -> None:
        """Show the legend of `layer` (None hides it); follows its contrast limits."""
        old = self._layer() if self._layer is not None else None
        if old is not (_real(layer) if layer is not None else None):
            if old is not None:
                for emitter in (old.events.contrast_limits, old.events.colormap):
                    try:
                        emitter.disconnect(self._update)
                    except (TypeError, ValueError, RuntimeError):
                        pass
            if layer is not None:
                layer.events.contrast_limits.connect(self._update)
                layer.events.colormap.connect(self._update)
            self._layer = weakref.ref(_real(layer)) if layer is not None else None
        self.fields = fields
        self._update()
        self.setVisible(layer is not None)

    def set_backdrop(self, rgb: tuple[float, float, float]) -> None:
        """Draw the bar over `rgb` (0-1): what the map's clear end shows."""
        r, g, b = (float(v) for v in rgb[:3])
        if (r, g, b) != self.backdrop:
            self.backdrop = (r, g, b)
            self._update()

    def _update(self, event: Any = None) -> None:
        import numpy as np

        layer = self._layer() if self._layer is not None else None
        if layer is None or not _workers.alive(self):
            return
        lo, hi = (float(v) for v in layer.contrast_limits)
        rgba = np.asarray(layer.colormap.map(np.linspace(0.0, 1.0, self.BAR[0])), np.float64)
        under = np.asarray(self.backdrop, np.float64)
        rgb = rgba[:, :3] * rgba[:, 3:] + under * (1.0 - rgba[:, 3:])
        row = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
        img = np.ascontiguousarray(np.repeat(row[None], self.BAR[1], axis=0))
        h, w = img.shape[:2]
        qimg = QImage(img.tobytes(), w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        self.bar.setPixmap(QPixmap.fromImage(qimg))
        self.low.setText(f"{lo:g}")
        self.high.setText(f"{hi:g}+")
        self.text.setText(self.template.format(lo=f"{lo:g}", hi=f"{hi:g}", **self.fields))
        self.bar.setToolTip(
            f"Colour scale of '{layer.name}': clear at {lo:g} grey levels and below, "
            f"full colour at {hi:g} and above (change it with the layer's contrast limits)"
        )


def _spread_limits(values: Any) -> tuple[float, float]:
    """Colour scale of an uncertainty map: from the view's 5th to its 99.5th percentile
    of spread, in whole grey levels (below 1 grey level counts as clear: 0)."""
    import numpy as np

    if not values.size:
        return 0.0, 1.0
    q_lo, q_hi = (float(v) for v in np.quantile(values, UNCERTAINTY_RANGE))
    lo = float(np.floor(q_lo)) if q_lo >= 1.0 else 0.0
    return lo, max(lo + 1.0, float(np.ceil(q_hi)))


class _LiveMap:
    """A departure layer's background computation, and the relay that refreshes the
    layer on the GUI thread as pieces of the map land."""

    def __init__(self, layer: Any, live: Any, on_failed: Any) -> None:
        class _Relay(QObject):
            fire = Signal(str)

        self.live = live
        self.layer = weakref.ref(_real(layer))
        self.on_failed = on_failed
        self.relay = _Relay()
        self.relay.fire.connect(self._on_event, Qt.ConnectionType.QueuedConnection)
        live.listeners.append(self._emit)

    def _emit(self, event: str) -> None:  # any thread
        try:
            self.relay.fire.emit(event)
        except RuntimeError:  # the Qt object is gone (viewer closed)
            pass

    def _on_event(self, event: str) -> None:  # GUI thread
        layer = self.layer()
        if layer is None:
            return
        if event == "landed" and layer.visible:
            layer.refresh(thumbnail=False, highlight=False, extent=False)
        elif event == "failed":
            self.on_failed(self.live.error or "unknown error")

    def close(self) -> None:
        self.live.close()


@dataclass
class _SpreadJob:
    """A running uncertainty sampling: its worker, stop event, view box and progress bar."""

    worker: Any
    stop: threading.Event
    box: _layers.CropBox
    pair_id: str
    n: int
    model: str
    bar: Any


def _spread_gen(
    lr0: Any,
    model: Any,
    region: tuple[int, int, int, int],
    seeds: tuple[int, ...],
    device: str,
    tile: int,
    stop: threading.Event,
    hr_box: tuple[Any, _layers.CropBox] | None = None,
) -> Generator[Any, None, None]:
    """The uncertainty worker: samples done (ints), then the `SpreadResult`; a failure
    as a message. With (HR level 0, the view's box) each sample is scored against HR."""
    from napari_srgan_sqe.inference.diagnostics import iter_spread

    try:
        ref = None
        if hr_box is not None:
            hr0, b = hr_box
            ref, _ = _layers.read_crop(hr0, b.y0, b.y1, b.x0, b.x1)
        gen = iter_spread(
            lr0, model, region, seeds, device=device, tile=tile, stop=stop, reference=ref
        )
        while True:
            try:
                yield next(gen)
            except StopIteration as end:
                if end.value is not None:
                    yield end.value
                return
    except Exception as exc:  # noqa: BLE001 - shown as a notification
        log.debug("uncertainty failed", exc_info=True)
        yield str(exc) or type(exc).__name__
