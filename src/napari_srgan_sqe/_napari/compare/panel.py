"""Compare's honest-SR controls (docs/honest-sr.md) and what they do: the departure map
of the pair's SR, saving it, and the uncertainty of N samples of the view.

`MapPanel` owns the checkbox, buttons, label and legends, the departure layers'
background work (`maps.LiveMap`) and the running sampling (`maps.SpreadJob`); the
Compare widget lays its controls out (`add_to`) and tells it about layers that come,
change and go.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_srgan_sqe._napari import _dock, _layers, _workers
from napari_srgan_sqe._napari.compare.maps import (
    DEPARTURE,
    DEPARTURE_CLEAR,
    DEPARTURE_LEGEND,
    DEPARTURE_TIP,
    MAP_KEY,
    MAP_OPACITY,
    MAP_ROLES,
    SPREAD_MAX_SIDE,
    UNCERTAINTY,
    UNCERTAINTY_LEGEND,
    UNCERTAINTY_TIP,
    Legend,
    LiveMap,
    SpreadJob,
    departure_refusal,
    map_colormap,
    map_kind,
    map_layers,
    map_name,
    map_tag,
    real_layer,
    same_grid,
    spread_gen,
    spread_limits,
    um_per_px,
)


class MapPanel(QObject):
    """The departure map and the uncertainty of the pair that `pair()` names.

    `owner`: the widget whose workers these are (stopped when its viewer closes) and
    the parent of the save dialog; `maps_changed`: called when a map layer came or
    went; `spread_shown`: called with the uncertainty layer once it shows a spread.
    A QObject (a child of `owner`), so its slots run on the GUI thread.
    """

    def __init__(
        self,
        viewer: Any,
        owner: QWidget,
        pair: Callable[[], _layers.LayerPair | None],
        maps_changed: Callable[[], None],
        spread_shown: Callable[[Any], None],
    ) -> None:
        super().__init__(owner)
        self.viewer = viewer
        self.owner = owner
        self._pair = pair
        self._maps_changed = maps_changed
        self._spread_shown = spread_shown
        self._live_maps: weakref.WeakKeyDictionary[Any, LiveMap] = weakref.WeakKeyDictionary()
        self._spread: SpreadJob | None = None
        self.last_spread: Any = None
        """The last `SpreadResult` shown (None before the first)."""
        self.departure_box = QCheckBox("Where SR departs from the scan")
        self.departure_box.setToolTip(DEPARTURE_TIP)
        self.save_map_button = QPushButton("Save...")
        self.save_map_button.setToolTip(
            "Save the departure map of the view as a TIFF (32-bit grey levels, one value "
            "per LR pixel), computed for the view if it is not yet"
        )
        self.departure_legend = Legend("Departure from the scan", DEPARTURE_LEGEND)
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
        self.uncertainty_legend = Legend("Uncertainty (spread of samples)", UNCERTAINTY_LEGEND)
        self._on_samples(self.samples_box.value())

        self.departure_box.toggled.connect(lambda on: self.show_departure(on))
        self.save_map_button.clicked.connect(lambda: self._ask_save_departure())
        self.samples_box.valueChanged.connect(self._on_samples)
        self.uncertainty_button.clicked.connect(lambda: self.run_uncertainty())
        self.stop_button.clicked.connect(lambda: self.stop_uncertainty())

    def add_to(self, layout: QVBoxLayout) -> None:
        """Lay the controls out at the end of `layout`."""
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

    def set_backdrop(self, rgb: tuple[float, float, float]) -> None:
        """What the legends' bars are drawn over (`Legend.set_backdrop`)."""
        for legend in (self.departure_legend, self.uncertainty_legend):
            legend.set_backdrop(rgb)

    # ---------------------------------------------------------------- the map layers
    def _map_layer(self, kind: str) -> Any:
        pair = self._pair()
        found = map_layers(self.viewer.layers, pair.pair_id, kind) if pair is not None else []
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
        state = self._live_maps.get(real_layer(layer))
        return state.live if state is not None else None

    def show_departure(self, on: bool = True) -> Any:
        """Add (on) or remove (off) the departure layer of the pair; returns the layer.

        Refused, with the reason in the widget, when the pair's SR layer was not made
        by this plugin or its model is stochastic (then use Uncertainty).
        """
        pair = self._pair()
        layer = self.departure_layer
        if not on:
            if layer is not None:
                self._remove_layer(layer)
            self.sync_controls()
            return None
        if layer is not None:
            self.sync_controls()
            return layer
        pyramid = _layers.pyramid_of(pair.sr) if pair is not None and pair.sr is not None else None
        why = departure_refusal(pyramid)
        if why is not None or pyramid is None or pair is None or pair.sr is None:
            self.uncertainty_label.setText(why or "no SR layer yet: use Enhance")
            self.sync_controls()
            return None
        from napari_srgan_sqe.inference.diagnostics import DEPARTURE_LIMIT, LiveDeparture

        live = LiveDeparture(pyramid)
        layer = self.viewer.add_image(
            live.levels,
            multiscale=True,
            name=map_name(DEPARTURE, pair, pyramid.model.name),
            colormap=map_colormap(),
            contrast_limits=(DEPARTURE_CLEAR, DEPARTURE_LIMIT),
            opacity=MAP_OPACITY,
            blending="translucent",
            metadata={MAP_KEY: {"kind": DEPARTURE, "pair_id": pair.pair_id}},
            **same_grid(pair.sr),
        )
        self._live_maps[real_layer(layer)] = LiveMap(layer, live, self._on_map_failed)
        self._maps_changed()
        return layer

    def _on_map_failed(self, message: str) -> None:
        self.uncertainty_label.setText(f"departure map failed: {message}")
        _dock.notify_error(f"Compare: departure map failed: {message}")

    def follow_sr(self, sr: Any) -> None:
        """The SR layer's model or pyramid changed: its departure map follows."""
        pid = _layers.pair_id_of(sr)
        pair = _layers.find_pair(self.viewer.layers, pid) if pid else None
        pyramid = _layers.pyramid_of(sr)
        for layer in map_layers(self.viewer.layers, pid, DEPARTURE):
            why = departure_refusal(pyramid)
            if why is not None or pair is None:
                self.uncertainty_label.setText(f"departure map removed: {why}")
                QTimer.singleShot(0, lambda x=layer: self._remove_layer(x))
                continue
            state = self._live_maps.get(real_layer(layer))
            if state is None or state.live.pyramid is not pyramid:  # a new SR pyramid
                from napari_srgan_sqe.inference.diagnostics import LiveDeparture

                if state is not None:
                    state.close()
                live = LiveDeparture(pyramid)
                self._live_maps[real_layer(layer)] = LiveMap(layer, live, self._on_map_failed)
                layer.data = live.levels
            layer.name = map_name(DEPARTURE, pair, pyramid.model.name)
            layer.refresh()

    def _remove_layer(self, layer: Any) -> None:
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def on_removed(self, layer: Any) -> None:
        """A layer left the viewer: its background work ends; the maps of an SR go too."""
        state = self._live_maps.pop(real_layer(layer), None)
        if state is not None:
            state.close()
        if _layers.role_of(layer) == "sr":  # the maps of a removed SR layer go with it
            for other in map_layers(self.viewer.layers, _layers.pair_id_of(layer)):
                QTimer.singleShot(0, lambda x=other: self._remove_layer(x))
        if map_kind(layer) in MAP_ROLES:
            try:
                self._maps_changed()
            except RuntimeError as exc:  # viewer.close() stops napari's slicer before it
                # removes the layers: re-arranging the grid then cannot slice, nor matters
                if "after shutdown" not in str(exc):
                    raise

    def sync_controls(self) -> None:
        """Checkbox, buttons and legends of the pair being compared."""
        pair = self._pair()
        pyramid = _layers.pyramid_of(pair.sr) if pair is not None and pair.sr is not None else None
        departure, uncertainty = self.departure_layer, self.uncertainty_layer
        self.departure_box.blockSignals(True)
        self.departure_box.setChecked(departure is not None)
        self.departure_box.blockSignals(False)
        why = departure_refusal(pyramid) if pair is not None else "no SR layer yet: use Enhance"
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
        n = map_tag(uncertainty).get("samples", self.samples_box.value()) if uncertainty else 0
        self.uncertainty_legend.set_layer(uncertainty, n=n)

    def _on_samples(self, n: int) -> None:
        self.uncertainty_button.setText(f"Uncertainty ({n} samples)")

    def close(self) -> None:
        """The viewer closed: end the departure maps' background work."""
        for state in list(self._live_maps.values()):
            state.close()

    # ---------------------------------------------------------------- saving the departure map
    def _ask_save_departure(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.owner,
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

        pair = self._pair()
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
        pair, layer = self._pair(), self.departure_layer
        live = self.departure_of(layer) if layer is not None else None
        box = _layers.fov_box(self.viewer, pair, max_side=SPREAD_MAX_SIDE) if pair else None
        if live is None or box is None or pair is None or pair.sr is None:
            self.uncertainty_label.setText("nothing to save: show the departure map of a view")
            return False
        y0, y1, x0, x1 = box.lr
        region = (x0, y0, x1 - x0, y1 - y0)
        mpp = um_per_px(pair.sr)
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
        _workers.start(worker, owner=self.owner)
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
        pair = self._pair()
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
            spread_gen,
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
        self._spread = SpreadJob(worker, stop, box, pair.pair_id, n, model.name, bar)
        worker.yielded.connect(self._on_spread_event)
        worker.finished.connect(self._on_spread_finished)
        w, h = region[2] * s, region[3] * s
        note = "" if model.descriptor.stochastic else " (deterministic model: expect 0)"
        self.uncertainty_label.setText(f"sampling {w} x {h} HR px: 0 of {n} done{note}")
        self.sync_controls()
        _workers.start(worker, owner=self.owner, stop=stop.set)
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

    def _show_spread(self, result: Any, job: SpreadJob) -> None:
        import numpy as np

        pair = _layers.find_pair(self.viewer.layers, job.pair_id)
        if pair is None or pair.sr is None:
            return
        values = result.pooled(job.box.scale)  # per LR pixel: the grain averages out
        lo, hi = spread_limits(values)
        geometry = same_grid(pair.sr)
        scale = np.asarray(geometry["scale"], dtype=float)
        translate = np.asarray(geometry["translate"], dtype=float)
        geometry["translate"] = tuple(translate + np.array([job.box.y0, job.box.x0]) * scale)
        name = map_name(UNCERTAINTY, pair, f"{result.model}, {job.n} samples")
        meta = {MAP_KEY: {"kind": UNCERTAINTY, "pair_id": job.pair_id, "samples": job.n}}
        old = map_layers(self.viewer.layers, job.pair_id, UNCERTAINTY)
        if old:
            layer = old[0]
            layer.data = values
            layer.metadata = {**layer.metadata, **meta}
            layer.translate, layer.scale = geometry["translate"], geometry["scale"]
            layer.contrast_limits = (lo, hi)
            layer.name = name
            self.sync_controls()
        else:
            layer = self.viewer.add_image(
                values,
                name=name,
                colormap=map_colormap(),
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
        self._spread_shown(layer)

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
        if _workers.alive(self.owner):
            self.sync_controls()
