"""The "Enhance" widget: super-resolve an image layer lazily, tile by tile.

The widget only arranges layers. Loading a model, simulating LR with a degradation
preset ('clean': the reference D_s; 'scanner': blur, noise and JPEG / JPEG 2000 coding
as a scanner's file holds) and building the lazy SR pyramid happen in
`inference.enhancement.prepare_enhance`, a generator run in a napari thread worker; it
yields progress strings and returns a `Prepared` result that the GUI thread turns into
layers (`pairs.place`). Tiles are computed later by dask when napari slices the SR
layer (with async slicing on, off the GUI thread).

The Model box (`form.EnhanceForm`) follows what the LR is, until the user picks a model
by hand: for LR simulated by 'clean' the clean model, by 'scanner' the scanner model;
for an image layer read from a file, `model_for_coding` of how the file stores it
(shown as "Stored as: ..."): the clean model only for losslessly stored slides.

Programmatic use (tests, `srgan-sqe view`):
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Enhance")
    sr = widget.enhance(simulate_from=hr_layer, model="bicubic-x4", wait=True)
    sr = widget.enhance(simulate_from=hr_layer, degradation="scanner", wait=True)
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_srgan_sqe._napari import _dock, _layers, _workers
from napari_srgan_sqe._napari.enhance.form import LOAD_FILE, EnhanceForm
from napari_srgan_sqe._napari.enhance.pairs import Request, make_request, place
from napari_srgan_sqe._napari.enhance.status import is_busy, pyramid_status, sr_name
from napari_srgan_sqe.inference.enhancement import (
    Prepared,
    layer_coding,
    model_path,
    prepare_enhance,
    probe_steps,
    switch_model,
)

__all__ = ["EnhanceWidget"]


class EnhanceWidget(QWidget):
    """Choose LR (or simulate it from HR), a model, a device; add a lazy SR layer.

    `simulate_box`: "Simulate LR" off / clean (D_s) / scanner (item data: the preset
    or None); `coding_label`: how the chosen layer's file stores it; `model_box`: its
    default follows them (`default_model_name`) until a model is picked by hand.
    The boxes are `form`'s (`form.EnhanceForm`).
    """

    sr_ready = Signal(object)
    """Emitted with the SR layer when it has been added or switched to a new model."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._workers: set[Any] = set()
        self._auto_device = "?"

        self.form = form = EnhanceForm()
        self.layer_box, self.coding_label = form.layer_box, form.coding_label
        self.simulate_box, self.model_box = form.simulate_box, form.model_box
        self.device_box, self.tile_box, self.seed_box = (
            form.device_box,
            form.tile_box,
            form.seed_box,
        )
        self.enhance_button = QPushButton("Enhance")
        self.status = QLabel("no SR layer yet")
        self.status.setWordWrap(True)

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addLayout(form.layout)
        layout.addWidget(self.enhance_button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.scroll_area = _dock.scroll_contents(self, content)  # a short dock scrolls

        self.model_box.activated.connect(self._on_model_activated)
        self.layer_box.currentTextChanged.connect(self._on_layer_chosen)
        self.simulate_box.currentIndexChanged.connect(lambda _: self._update_default_model())
        self.enhance_button.clicked.connect(lambda: self.enhance())
        for ev in ("inserted", "removed", "moved", "changed"):
            getattr(self.viewer.layers.events, ev).connect(self._refresh_layers)
        self.viewer.layers.events.inserted.connect(self._watch_name)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)
            layer.events.metadata.connect(self._on_metadata)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._refresh_layers()

        self._timer = QTimer(self)
        self._timer.setInterval(500)
        self._timer.timeout.connect(self._update_status)
        self._timer.start()
        self._run(probe_steps(), self._on_probe)

    # ---------------------------------------------------------------- public API
    def enhance(
        self,
        lr_layer: Any = None,
        *,
        simulate_from: Any = None,
        degradation: str | None = None,
        model: Any = None,
        device: str | None = None,
        tile: int | None = None,
        seed: int | None = None,
        wait: bool = False,
    ) -> Any:
        """Add (or renew) the SR layer of `lr_layer`, or of LR simulated from `simulate_from`.

        `degradation`: how LR is simulated, 'clean' (D_s) or 'scanner'; by default the
        "Simulate LR" choice, or 'clean' when it is off. Arguments left None are read
        from the widget; the model is the Model box's, which follows the LR (see the
        class) unless picked by hand. `wait=False` (the button) loads the model in a
        worker and returns None; `sr_ready` fires with the layer. With `wait=True` the
        work runs in the calling thread and the SR layer is returned. Failures are
        shown as notifications; then None is returned.
        """
        if lr_layer is None and simulate_from is None:
            chosen = self._chosen_layer()
            if chosen is None:
                _dock.notify_error("Enhance: add an RGB image layer first")
                return None
            preset = self.simulate_preset
            if preset is not None:
                simulate_from = chosen
            else:
                lr_layer = chosen
        else:  # called from code: show what is being done
            preset = None
            if simulate_from is not None:
                preset = degradation or self.simulate_preset or "clean"
            self.set_simulate(preset)
            if model is not None:
                self.form.show_model(model)
                self.form.by_hand = True
        req = make_request(self.viewer.layers, lr_layer, simulate_from, preset or "clean")
        if model is None and not self.form.by_hand:
            source = simulate_from if simulate_from is not None else lr_layer
            model = self.form.auto_model(source, preset)
            self.form.show_model(model)  # shown, not a choice by hand
        model = model if model is not None else self.model_box.currentData()
        req.model_path = model_path(model)
        kwargs = dict(
            req.kwargs,
            model=model,
            device=device or self.form.device,
            tile=tile if tile is not None else self.form.tile,
            seed=int(seed) if seed is not None else self.seed_box.value(),
            # a layer read from a file tells a conditioned model its coding; simulated
            # LR (a random draw of the degradation) is unknown to it
            coding=layer_coding(lr_layer)
            if lr_layer is not None and simulate_from is None
            else None,
        )
        if wait:
            return self._finish(req, _drain(prepare_enhance(**kwargs)))
        self.enhance_button.setEnabled(False)
        self._run(prepare_enhance(**kwargs), lambda res: self._finish(req, res))
        return None

    def set_model(
        self, model: Any, *, sr_layer: Any = None, wait: bool = False, seed: int | None = None
    ) -> Any:
        """Switch the SR layer (default: the current pair's) to `model`, drawing the sample
        `seed` of a stochastic model (default: the Seed box's); returns it if waiting."""
        seed = int(seed) if seed is not None else self.seed_box.value()
        sr_layer = sr_layer if sr_layer is not None else self._current_sr()
        pyramid = _layers.pyramid_of(sr_layer) if sr_layer is not None else None
        if pyramid is None:
            return None
        if is_busy(sr_layer):
            _dock.notify_warning(
                f"Enhance: {sr_layer.name!r} is being fine-tuned; switch its model when that ends"
            )
            return None

        def done(res: Prepared) -> Any:
            if res.error:
                self.status.setText(f"model not switched: {res.error}")
                _dock.notify_error(f"Enhance: {res.error}")
                self._forget_model(model)
                return None
            _layers.show_pyramid(sr_layer, res.pyramid, model_path=model_path(model))
            sr_layer.name = sr_name(sr_layer)
            self.sr_ready.emit(sr_layer)
            return sr_layer

        if wait:
            return done(_drain(switch_model(pyramid, model, seed)))
        self._run(switch_model(pyramid, model, seed), done)
        return None

    @property
    def busy(self) -> bool:
        """True while a model is loading or a pyramid is being prepared."""
        return bool(self._workers)

    @property
    def simulate_preset(self) -> str | None:
        """The "Simulate LR" choice: 'clean', 'scanner', or None (off)."""
        return self.form.simulate_preset

    def set_simulate(self, preset: str | None) -> None:
        """Choose "Simulate LR": None (off), 'clean' or 'scanner'."""
        self.form.set_simulate(preset)

    # ---------------------------------------------------------------- helpers
    def _run(self, gen: Generator[Any, None, Any], on_done: Any) -> None:
        from napari.qt.threading import create_worker

        def guarded(fn: Any) -> Any:  # the widget may be gone (napari closed) when it ends
            return lambda *args: fn(*args) if _workers.alive(self) else None

        worker = create_worker(_passthrough, gen, _start_thread=False)
        worker.yielded.connect(guarded(self.status.setText))
        worker.returned.connect(guarded(on_done))
        worker.finished.connect(guarded(lambda: self._worker_done(worker)))
        self._workers.add(worker)
        _workers.start(worker, owner=self)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        _dock.fit_width(self.scroll_area)  # napari's style sheet (fonts) applies once docked
        _workers.stop_on_close(self, self._on_viewer_closed)

    def _on_viewer_closed(self) -> None:
        """The viewer window closed: end the model loading / preparing in the background."""
        self._timer.stop()
        _workers.stop(self)

    def _worker_done(self, worker: Any) -> None:
        self._workers.discard(worker)
        if not self._workers:
            self.enhance_button.setEnabled(True)

    def _finish(self, req: Request, res: Prepared) -> Any:
        """Add the LR (if simulated) and SR layers for a finished background prepare."""
        if req.source not in self.viewer.layers:  # removed meanwhile, or the viewer closed
            self.status.setText("the image layer was removed; nothing added")
            return None
        if res.error:
            self.status.setText(f"failed: {res.error}")
            _dock.notify_error(f"Enhance: {res.error}")
            return None
        lr_layer, sr = place(self.viewer, req, res)
        self._select_layer(lr_layer if req.hr_layer is None else req.hr_layer)
        self._update_status()
        self.sr_ready.emit(sr)
        return sr

    def _chosen_layer(self) -> Any:
        name = self.layer_box.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _current_sr(self) -> Any:
        chosen = self._chosen_layer()
        pair = _layers.find_pair(self.viewer.layers, chosen) if chosen is not None else None
        pair = pair or _layers.find_pair(self.viewer.layers)
        return pair.sr if pair is not None else None

    def _select_layer(self, layer: Any) -> None:
        index = self.layer_box.findText(layer.name)
        if index >= 0:
            self.layer_box.setCurrentIndex(index)

    def _refresh_layers(self, event: Any = None) -> None:
        current = self.layer_box.currentText()
        names = [
            layer.name
            for layer in _layers.rgb_image_layers(self.viewer.layers)
            if _layers.role_of(layer) != "sr"
        ]
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)
        self.layer_box.blockSignals(False)
        self._on_layer_chosen()

    def _watch_name(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_layers)
        event.value.events.metadata.connect(self._on_metadata)

    def _on_metadata(self, event: Any) -> None:
        """An SR layer's model changed (e.g. by Fine-tune): show it in the Model box."""
        if _layers.role_of(event.source) == "sr":
            self._show_sr_model()

    def _show_sr_model(self) -> None:
        """Select the model the current SR layer really uses (its file, or its bundled name)."""
        sr = self._current_sr()
        tag = getattr(sr, "metadata", {}).get(_layers.META_KEY) if sr is not None else None
        if not isinstance(tag, dict) or not _workers.alive(self):
            return
        model = tag.get("model_path") or tag.get("model")
        if not model or self.model_box.currentData() == model:
            return
        before = self.model_box.currentIndex()
        self.form.show_model(Path(model) if tag.get("model_path") else model)
        if self.model_box.currentIndex() != before and self.model_box.currentData() == model:
            self.form.by_hand = True  # a model the layer was switched to, not a default

    def _on_active_layer(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        if active is not None and self.layer_box.findText(active.name) >= 0:
            self.layer_box.setCurrentText(active.name)

    # ---------------------------------------------------------------- models / devices
    def _on_layer_chosen(self, _text: str = "") -> None:
        """Show how the chosen layer is stored; let the default model follow it."""
        self.form.show_layer(self._chosen_layer())
        self._update_default_model()

    def _update_default_model(self) -> None:
        """Select the default model in the Model box, unless one was picked by hand."""
        self.form.update_default(self._chosen_layer())

    def _on_probe(self, info: dict[str, Any]) -> None:
        """Fill the model list (bundled, then files loaded so far) and the auto device."""
        self.form.fill_models(info["models"], self._chosen_layer())
        self._auto_device = info["auto"]
        self.form.set_auto_device(self._auto_device)
        self.status.setText(f"ready; auto device is {self._auto_device}")

    def _forget_model(self, model: Any) -> None:
        """A model that failed to load: drop its file from the list and show again the
        model the SR layer really uses."""
        if not _workers.alive(self):
            return
        by_hand = self.form.by_hand
        self.form.drop_file(model_path(model))  # so that the layer's model is selected anew
        self._show_sr_model()
        self.form.by_hand = by_hand

    def _on_model_activated(self, index: int) -> None:
        previous = self.form.index
        if self.model_box.itemData(index) == LOAD_FILE:
            path, _ = QFileDialog.getOpenFileName(
                self, "Load a model", "", "Model files (*.safetensors);;All files (*)"
            )
            if not path:
                self.model_box.setCurrentIndex(self.form.index)
                return
            self.form.show_model(Path(path))
            self.form.index = -1  # a new choice: switch the SR layer below
        if self.model_box.currentIndex() != self.form.index:
            sr = self._current_sr()
            if sr is not None and is_busy(sr):  # a fine-tune runs on it: keep the old choice
                self.set_model(self.model_box.currentData())  # refuses, with a warning
                self.form.index = previous
                self.model_box.setCurrentIndex(previous)
                return
            self.form.index = self.model_box.currentIndex()
            self.form.by_hand = True
            self.set_model(self.model_box.currentData())

    def _update_status(self) -> None:
        sr = self._current_sr()
        pyramid = _layers.pyramid_of(sr) if sr is not None else None
        if pyramid is None or self._workers:
            return
        self.status.setText(pyramid_status(pyramid))


def _passthrough(gen: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """Run `gen` in a napari GeneratorWorker (yielded values are progress messages)."""
    return (yield from gen)


def _drain(gen: Generator[Any, None, Any]) -> Any:
    """Run a generator to its end in this thread; its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
