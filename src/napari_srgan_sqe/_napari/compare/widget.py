"""The "Compare" widget: LR | SR | HR side by side or overlaid, with quality readouts.

Readouts are for the field of view: the part of SR level 0 (the HR pixel grid) under
the camera, its centre `MAX_CROP` px at most (`_layers.fov_box`). After the camera
settles (debounced), `inference.readouts.compute_readouts` runs in a thread worker on
arrays captured on the GUI thread: it crops SR, HR and LR level 0, and yields one
`ReadoutColumn` per comparison (SR vs HR, bicubic(LR) vs HR; with no HR the
consistency D_s(SR) vs LR), which `table.ReadoutTable` shows. Every request carries a
generation number; a column of an older generation is dropped, so a slow result never
overwrites a newer view.

Honest SR (docs/honest-sr.md, `panel.MapPanel`, `maps`): "Where SR departs from the
scan" adds a colour-mapped map layer of the pair's SR; "Uncertainty (N samples)"
super-resolves the view with N seeds and adds the spread of the samples as a layer.
Both map layers sit next to SR in the side-by-side grid and over it in the overlay.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from qtpy.QtCore import QEvent, QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_srgan_sqe._napari import _dock, _layers, _workers
from napari_srgan_sqe._napari.compare.layout import hide_others, lay_out
from napari_srgan_sqe._napari.compare.maps import canvas_rgb
from napari_srgan_sqe._napari.compare.panel import MapPanel
from napari_srgan_sqe._napari.compare.table import HR_COLUMNS, ReadoutTable
from napari_srgan_sqe.inference.readouts import (
    CONSISTENCY,
    CropBox,
    Readout,
    ReadoutColumn,
    compute_readouts,
)

__all__ = ["CompareWidget"]

log = logging.getLogger(__name__)

MODES = ("side by side", "overlay")
DEBOUNCE_MS = 300


class CompareWidget(QWidget):
    """Arrange a pair's layers and show quality readouts for the field of view.

    The controls sit in a scroll area (`scroll_area`), so every readout row can be
    reached in a short dock; the table itself never scrolls. The honest-SR controls
    and their work are `maps` (a `MapPanel`); their controls and methods are also
    reachable here (`departure_box`, `show_departure`, `run_uncertainty`, ...).
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
        self.table = ReadoutTable()
        self.caption = self.table.caption
        self._set_columns(HR_COLUMNS)

        # honest SR: the departure map and the uncertainty of stochastic models
        self.maps = MapPanel(
            self.viewer,
            self,
            lambda: self.pair,
            self._maps_changed,
            lambda layer: self.uncertainty_ready.emit(layer),
        )
        m = self.maps
        self.departure_box, self.save_map_button = m.departure_box, m.save_map_button
        self.departure_legend, self.uncertainty_legend = m.departure_legend, m.uncertainty_legend
        self.samples_box, self.uncertainty_button = m.samples_box, m.uncertainty_button
        self.stop_button, self.uncertainty_label = m.stop_button, m.uncertainty_label

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
        self.maps.add_to(layout)
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
        return list(self.table.columns)

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
        camera = _layers._camera(self.viewer)
        center, zoom = tuple(camera.center), float(camera.zoom)
        side_by_side = self.mode_box.currentText() == MODES[0]
        self._arranging = True
        try:
            opacity = self.opacity.value() / 100
            lay_out(
                self.viewer, pair, side_by_side=side_by_side, opacity=opacity, hidden=self._hidden
            )
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
        self.table.clear_values()  # the numbers shown are of a view the user has left
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
        self._set_columns(HR_COLUMNS if mode_hr else [CONSISTENCY])
        self.fov_label.setText(f"{_where(box, pair)} (computing...)")
        lr0 = _layers.layer_levels(pair.lr)[0] if pair.lr is not None else _lr_from_sr(pair)
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

    def _on_column(self, column: ReadoutColumn | str) -> None:
        if isinstance(column, str):  # an error message
            self.fov_label.setText(f"readout failed: {column}")
            _dock.notify_error(f"Compare: {column}")
            return
        part = self._partial
        if part is None or not column.generation == part.generation == self._generation:
            return  # the view moved on: a newer readout is coming
        part.columns[column.name] = column.values
        self.table.show_readout(part)

    def _on_finished(self) -> None:
        self._worker = None
        part = self._partial
        if part is not None and part.generation == self._generation and part.columns:
            self.last_readout = part
            self.fov_label.setText(_where(part.box, self.pair))
            self.readout_ready.emit(part)
        if self._pending:
            self._start_readout()

    # ---------------------------------------------------------------- the table
    def _set_columns(self, names: list[str]) -> None:
        """Show these comparisons as columns, and only the metric rows they have."""
        if self.table.set_columns(names):
            self._fit_table()

    def _fit_table(self) -> None:
        """Size the table to show every header and visible row without scrolling."""
        self.table.fit()
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
        side_by_side = self._side_by_side_shown()
        self.maps.set_backdrop(canvas_rgb(self.viewer) if side_by_side else (1.0, 1.0, 1.0))

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
        hide_others(self.viewer, pair, self._hidden)

    def _on_layer_changed(self, event: Any) -> None:
        pid = self.pair_box.currentData()
        source_pid = _layers.pair_id_of(event.source)
        if source_pid is not None:
            is_sr = _layers.role_of(event.source) == "sr"
            if is_sr and event.type in ("data", "metadata"):
                self.maps.follow_sr(event.source)
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
        self.maps.sync_controls()

    def _on_pair_chosen(self) -> None:
        """The user picked a pair: lay it out (its layers may be hidden, e.g. side by side)."""
        self.arrange()
        self.schedule_update()

    def _on_opacity(self, value: int) -> None:
        pair = self.pair
        if pair is not None and pair.sr is not None and self.mode_box.currentText() == MODES[1]:
            pair.sr.opacity = value / 100

    # ---------------------------------------------------------------- honest SR (`maps`)
    def _on_removed(self, event: Any) -> None:
        self.maps.on_removed(event.value)

    def _maps_changed(self) -> None:
        """A map layer came or went: controls, legends, and the grid's cells."""
        self.maps.sync_controls()
        if self._side_by_side_shown() or (
            self._arranged_pair is not None and self.mode_box.currentText() == MODES[1]
        ):
            self.arrange()

    @property
    def departure_layer(self) -> Any:
        """The departure layer of the pair being compared, or None."""
        return self.maps.departure_layer

    @property
    def uncertainty_layer(self) -> Any:
        """The uncertainty layer of the pair being compared, or None."""
        return self.maps.uncertainty_layer

    @property
    def last_spread(self) -> Any:
        """The last `SpreadResult` shown (None before the first)."""
        return self.maps.last_spread

    @property
    def uncertainty_running(self) -> bool:
        """True while samples of the view are being drawn."""
        return self.maps.uncertainty_running

    def departure_of(self, layer: Any) -> Any:
        """`MapPanel.departure_of`: the `LiveDeparture` behind a departure layer."""
        return self.maps.departure_of(layer)

    def show_departure(self, on: bool = True) -> Any:
        """`MapPanel.show_departure`: add (on) or remove (off) the departure layer."""
        return self.maps.show_departure(on)

    def departure_file_name(self) -> str:
        """`MapPanel.departure_file_name`: the file name offered for the view's map."""
        return self.maps.departure_file_name()

    def save_departure(self, path: Any, *, wait: bool = False) -> bool:
        """`MapPanel.save_departure`: write the departure map of the view as a TIFF."""
        return self.maps.save_departure(path, wait=wait)

    def run_uncertainty(self, samples: int | None = None) -> bool:
        """`MapPanel.run_uncertainty`: the spread of N samples of the view, as a layer;
        `uncertainty_ready` fires with the layer when it is shown."""
        return self.maps.run_uncertainty(samples)

    def stop_uncertainty(self) -> None:
        """`MapPanel.stop_uncertainty`: end the sampling after the current sample."""
        self.maps.stop_uncertainty()

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
        self.maps.close()


def _where(box: CropBox, pair: Any = None) -> str:
    """'view: 420 x 420 HR px at x 2030, y 1180' (or 'centre of the view: ...'); SR px
    when the pair has no HR layer (a slide enhanced as it is)."""
    h, w = box.shape
    where = "centre of the view" if box.capped else "view"
    grid = "SR" if pair is not None and pair.hr is None else "HR"
    return f"{where}: {w} x {h} {grid} px at x {box.x0}, y {box.y0}"


def _readout_gen(
    generation: int, box: CropBox, sr0: Any, lr0: Any, hr0: Any
) -> Generator[ReadoutColumn | str, None, None]:
    """The worker: `compute_readouts`, with a failure turned into a message."""
    try:
        yield from compute_readouts(generation, box, sr0, lr0, hr0)
    except Exception as exc:  # noqa: BLE001 - shown as a notification
        log.debug("readout failed", exc_info=True)
        yield str(exc) or type(exc).__name__


def _lr_from_sr(pair: _layers.LayerPair) -> Any:
    """SR level 1 is LR level 0 in the engine's pyramid: use it if the LR layer is gone."""
    levels = _layers.layer_levels(pair.sr)
    h, w = levels[0].shape[:2]
    if len(levels) > 1 and levels[1].shape[:2] == (h // pair.scale, w // pair.scale):
        return levels[1]
    return None
