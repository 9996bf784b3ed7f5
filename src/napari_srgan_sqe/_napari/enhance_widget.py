"""The "Enhance" widget: super-resolve an image layer lazily, tile by tile.

The widget only arranges layers. Loading a model, simulating LR with a degradation
preset ('clean': the reference D_s; 'scanner': blur, noise and JPEG / JPEG 2000 coding
as a scanner's file holds) and building the lazy SR pyramid happen in `prepare_enhance`, a
generator run in a napari thread worker; it yields progress strings and returns a
`Prepared` result that the GUI thread turns into layers. Tiles are computed later by
dask when napari slices the SR layer (with async slicing on, off the GUI thread).

The Model box follows what the LR is, until the user picks a model by hand: for LR
simulated by 'clean' the clean model, by 'scanner' the scanner model; for an image
layer read from a file, `model_for_coding` of how the file stores it (shown as
"Stored as: ..."): the clean model only for losslessly stored slides.

Programmatic use (tests, `srgan-sqe view`):
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan-sqe", "Enhance")
    sr = widget.enhance(simulate_from=hr_layer, model="bicubic-x4", wait=True)
    sr = widget.enhance(simulate_from=hr_layer, degradation="scanner", wait=True)
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QStandardItemModel
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_srgan_sqe._napari import _dock, _layers, _workers

__all__ = [
    "SIMULATE_CHOICES",
    "EnhanceWidget",
    "Prepared",
    "default_model_name",
    "layer_coding",
    "prepare_enhance",
]

log = logging.getLogger(__name__)

LOAD_FILE = "load .safetensors..."
DEFAULT_ITEM = "default"
DEVICES = ("auto", "cuda", "mps", "cpu")
PREFERRED_MODELS = ("srgan-sqe-he-x4", "srgan-sqe-he-x4-clean", "bicubic-x4")
SIMULATE_CHOICES = (
    ("off", None, "super-resolve the layer itself (it is the LR)"),
    ("clean (D_s)", "clean", "this layer is the HR: LR = the reference degradation D_s"),
    ("scanner", "scanner", "this layer is the HR: LR = blur, noise and JPEG / JPEG 2000 coding"),
)
"""The "Simulate LR" choices: text, degradation preset (None: off), tooltip."""


def default_model_name(
    models: list[dict] | None = None, *, codec: str | None = None, preset: str | None = None
) -> str:
    """The bundled model to use by default, if its weights exist: for LR simulated
    with `preset` 'clean' the clean model, 'scanner' the scanner model; otherwise
    `model_for_coding(codec)` (the clean model only for losslessly stored input)."""
    from napari_srgan_sqe.models.registry import model_for_coding

    if models is None:
        from napari_srgan_sqe.models.registry import list_models

        models = list_models()
    wanted = model_for_coding(codec, preset=preset)
    available = [m["name"] for m in models if m.get("available")]
    for name in (wanted, *PREFERRED_MODELS):
        if name in available:
            return name
    return available[0] if available else "bicubic-x4"


def layer_coding(layer: Any) -> Any:
    """The `SlideCoding` a layer's metadata records (the reader puts it there);
    unknown for layers made from arrays."""
    from napari_srgan_sqe.io.codecs import SlideCoding

    meta = getattr(layer, "metadata", None) or {}
    info = meta.get("coding") if isinstance(meta, dict) else None
    if not isinstance(info, dict):
        return SlideCoding()
    quality = info.get("quality")
    return SlideCoding(
        str(info.get("codec") or "unknown"),
        int(quality) if isinstance(quality, int | float) else None,
        str(info.get("detail") or ""),
    )


# ------------------------------------------------------------------ background work
@dataclass
class Prepared:
    """What a background enhance produced: the model, the SR pyramid, maybe LR levels."""

    pyramid: Any = None
    lr_levels: list[Any] | None = None
    error: str | None = None


def _probe() -> dict[str, Any]:
    """Bundled models and the device 'auto' picks (imports torch: run in a worker)."""
    from napari_srgan_sqe.models.predictor import resolve_device
    from napari_srgan_sqe.models.registry import list_models

    return {"models": list_models(), "auto": str(resolve_device("auto"))}


def prepare_enhance(
    *,
    model: Any,
    device: str,
    tile: int | None,
    lr_levels: list[Any] | None = None,
    hr_levels: list[Any] | None = None,
    expect_scale: int | None = None,
    degradation: str = "clean",
    seed: int = 0,
    coding: Any = None,
) -> Generator[str, None, Prepared]:
    """Load `model`, simulate LR from `hr_levels` if given, and build the lazy SR pyramid.

    `model`: an SRModel, a bundled name or a .safetensors path; None is
    `default_model_name(preset=...)` for simulated LR, else `default_model_name()`.
    `degradation`: the preset LR is simulated with ('clean' = D_s, or 'scanner').
    `seed`: the sample a stochastic model draws (deterministic models ignore it).
    `coding`: how the LR is stored (a `SlideCoding`, None: unknown), told to a model
    conditioned on it.

    Yields progress messages; returns `Prepared` (with `.error` set, never raising, so
    the GUI shows one clear notification). Touches no viewer: only arrays and files.
    """
    try:
        from napari_srgan_sqe.inference.engine import super_resolve
        from napari_srgan_sqe.models.coding import describe_coding
        from napari_srgan_sqe.models.modelfile import load_model, reads_coding
        from napari_srgan_sqe.models.predictor import resolve_device

        # the device 'auto' stands for, so every message names the one that computes
        device = str(resolve_device(device))
        if model is None:
            model = default_model_name(preset=degradation if hr_levels is not None else None)
        yield f"loading model {Path(str(model)).name if _is_path(model) else model} ..."
        loaded = load_model(model) if isinstance(model, str | os.PathLike) else model
        s = int(loaded.scale)
        if expect_scale is not None and s != expect_scale:
            raise ValueError(
                f"model {loaded.name!r} is {s}x but this pair of layers is {expect_scale}x"
            )
        if hr_levels is not None:
            how = f"D_{s}" if degradation == "clean" else f"{degradation} degradation, {s}x"
            yield f"simulating LR ({how}) lazily ..."
            lr_levels = _simulate_lr(hr_levels, s, degradation)
        yield f"preparing {loaded.name} on {device} ..."
        if reads_coding(loaded):
            yield f"telling {loaded.name} the LR is stored as {describe_coding(coding)} ..."
        # placeholders (bicubic under a veil) until the SR of the view lands
        pyramid = super_resolve(
            lr_levels,
            loaded,
            device=device,
            tile=tile,
            placeholder=True,
            seed=seed,
            coding=coding,
        )
        return Prepared(pyramid=pyramid, lr_levels=lr_levels)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
        log.debug("enhance failed", exc_info=True)
        return Prepared(error=str(exc) or type(exc).__name__)


def _is_path(model: Any) -> bool:
    return isinstance(model, os.PathLike) or (
        isinstance(model, str) and model.endswith(".safetensors")
    )


def _simulate_lr(hr_levels: list[Any], s: int, preset: str = "clean") -> list[Any]:
    """LR of every HR level big enough, lazily: LR level k is the preset's degradation
    of HR level k ('clean': D_s; 'scanner': one seeded draw of the scanner chain).
    Chunks are kept once computed (`SIMULATED_LR_CACHE`): the LR layer, the SR's
    halos, placeholders and readouts all read them, and each computation reads and
    blurs 16 times as many HR pixels."""
    import dask.array as da

    from napari_srgan_sqe.degradation import degrade_lazy, degrade_with
    from napari_srgan_sqe.inference.cache import memoized
    from napari_srgan_sqe.inference.tiling import as_rgb_uint8

    if preset not in ("clean", "scanner"):
        raise ValueError(f"unknown degradation preset {preset!r}; choose clean or scanner")
    out = []
    for i, level in enumerate(hr_levels):
        if i and min(level.shape[:2]) < 16 * s:
            break
        if not hasattr(level, "dask"):
            level = da.from_array(level, chunks=(1024, 1024, -1))
        if preset == "clean":
            lr = degrade_lazy(level, s)
        else:
            level = as_rgb_uint8(level, what=f"HR level {i}")
            lr = degrade_with(level, "scanner", s, seed=0)
        out.append(memoized(lr, _simulated_lr_cache()))
    return out


SIMULATED_LR_CACHE_MB = 256


@functools.cache
def _simulated_lr_cache() -> Any:
    """The memory cache of simulated LR chunks, shared by every layer (keys are the
    lazy graphs' names: the same HR and preset give the same name and pixels)."""
    from napari_srgan_sqe.inference.cache import TileCache

    return TileCache(SIMULATED_LR_CACHE_MB)


def _set_model(pyramid: Any, model: Any, seed: int | None = None) -> Generator[str, None, Prepared]:
    """Switch an SR pyramid to another model (worker side)."""
    try:
        from napari_srgan_sqe.models.modelfile import load_model

        model = default_model_name() if model is None else model
        yield f"loading model {model} ..."
        loaded = load_model(model) if isinstance(model, str | os.PathLike) else model
        if int(loaded.scale) != pyramid.scale:
            raise ValueError(
                f"model {loaded.name!r} is {loaded.scale}x but the SR layer is {pyramid.scale}x; "
                "press Enhance to make a new SR layer"
            )
        pyramid.set_model(loaded, seed=seed)
        return Prepared(pyramid=pyramid)
    except Exception as exc:  # noqa: BLE001
        log.debug("model switch failed", exc_info=True)
        return Prepared(error=str(exc) or type(exc).__name__)


# ------------------------------------------------------------------ the widget
@dataclass
class _Request:
    """One Enhance press: which layers, and how to place the result."""

    lr_layer: Any = None
    hr_layer: Any = None
    pair_id: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    degradation: str = "clean"
    old_lr: Any = None  # a simulated LR layer to renew (the preset changed)
    model_path: str | None = None  # the model file, when the model came from one


class EnhanceWidget(QWidget):
    """Choose LR (or simulate it from HR), a model, a device; add a lazy SR layer.

    `simulate_box`: "Simulate LR" off / clean (D_s) / scanner (item data: the preset
    or None); `coding_label`: how the chosen layer's file stores it; `model_box`: its
    default follows them (`default_model_name`) until a model is picked by hand.
    """

    sr_ready = Signal(object)
    """Emitted with the SR layer when it has been added or switched to a new model."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._workers: set[Any] = set()
        self._auto_device = "?"
        self._models: list[dict] | None = None  # bundled models, once the probe listed them
        self._model_by_hand = False  # a model picked by the user is never replaced

        self.layer_box = QComboBox()
        self.coding_label = QLabel()
        self.coding_label.setWordWrap(True)
        self.simulate_box = QComboBox()
        for text, preset, tip in SIMULATE_CHOICES:
            self.simulate_box.addItem(text, preset)
            self.simulate_box.setItemData(
                self.simulate_box.count() - 1, tip, Qt.ItemDataRole.ToolTipRole
            )
        self.simulate_box.setToolTip(
            "Treat the layer as HR and super-resolve LR simulated from it (so quality can "
            "be measured against it): clean = the reference D_s, scanner = blur, noise "
            "and JPEG / JPEG 2000 coding as in a scanner's file"
        )
        self.model_box = QComboBox()
        self.device_box = QComboBox()
        self.device_box.addItems(DEVICES)
        self.tile_box = QSpinBox()
        self.tile_box.setRange(0, 4096)
        self.tile_box.setSingleStep(64)
        self.tile_box.setSpecialValueText("auto")
        self.tile_box.setSuffix(" LR px")
        self.tile_box.setToolTip("Tile side; auto = 256 on CPU, 512 on a GPU")
        self.seed_box = QSpinBox()
        self.seed_box.setRange(0, 2**31 - 1)
        self.seed_box.setToolTip(
            "Which sample a stochastic model (e.g. SR3) draws: each seed gives another "
            "plausible image, the same seed the same image; it is shown in the SR layer's "
            "name. Deterministic models ignore it."
        )
        self.enhance_button = QPushButton("Enhance")
        self.status = QLabel("no SR layer yet")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Image layer", self.layer_box)
        form.addRow(self.coding_label)
        form.addRow("Simulate LR", self.simulate_box)
        form.addRow("Model", self.model_box)
        form.addRow("Device", self.device_box)
        form.addRow("Tile", self.tile_box)
        form.addRow("Seed", self.seed_box)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addWidget(self.enhance_button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.scroll_area = _dock.scroll_contents(self, content)  # a short dock scrolls

        self.model_box.addItem(DEFAULT_ITEM, None)  # until the worker lists the models
        self.model_box.addItem(LOAD_FILE, LOAD_FILE)
        self._model_index = self.model_box.currentIndex()
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
        self._run(_probe_gen(), self._on_probe)

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
                self._show_model(model)
                self._model_by_hand = True
        req = self._request(lr_layer, simulate_from, preset or "clean")
        if model is None and not self._model_by_hand:
            source = simulate_from if simulate_from is not None else lr_layer
            model = self._auto_model(source, preset)
            self._show_model(model)  # shown, not a choice by hand
        model = model if model is not None else self.model_box.currentData()
        req.model_path = _model_path(model)
        kwargs = dict(
            req.kwargs,
            model=model,
            device=device or self.device_box.currentText().split(" ")[0],
            tile=tile if tile is not None else (self.tile_box.value() or None),
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
        if _is_busy(sr_layer):
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
            _layers.show_pyramid(sr_layer, res.pyramid, model_path=_model_path(model))
            sr_layer.name = self._sr_name(sr_layer)
            self.sr_ready.emit(sr_layer)
            return sr_layer

        if wait:
            return done(_drain(_set_model(pyramid, model, seed)))
        self._run(_set_model(pyramid, model, seed), done)
        return None

    @property
    def busy(self) -> bool:
        """True while a model is loading or a pyramid is being prepared."""
        return bool(self._workers)

    @property
    def simulate_preset(self) -> str | None:
        """The "Simulate LR" choice: 'clean', 'scanner', or None (off)."""
        return self.simulate_box.currentData()

    def set_simulate(self, preset: str | None) -> None:
        """Choose "Simulate LR": None (off), 'clean' or 'scanner'."""
        found = [
            i for i in range(self.simulate_box.count()) if self.simulate_box.itemData(i) == preset
        ]
        if not found:
            known = ", ".join(repr(p) for _, p, _ in SIMULATE_CHOICES)
            raise ValueError(f"unknown degradation preset {preset!r}; choose one of {known}")
        self.simulate_box.setCurrentIndex(found[0])

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

    def _request(self, lr_layer: Any, hr_layer: Any, degradation: str = "clean") -> _Request:
        """Decide the pair and the levels to send to the worker (GUI thread)."""
        if hr_layer is not None:
            pair = _layers.find_pair(self.viewer.layers, hr_layer)
            if pair is not None and (pair.hr is None or pair.lr is None):
                pair = None  # no LR simulated from it yet: a new pair
            if pair is not None and _simulated_by(pair.lr) == degradation:
                lr_layer, hr_layer = pair.lr, None  # LR already simulated: enhance it again
            else:  # new, or simulated with another preset: (re)simulate in the same pair
                return _Request(
                    hr_layer=hr_layer,
                    pair_id=pair.pair_id if pair is not None else _layers.new_pair_id(),
                    kwargs={
                        "hr_levels": _layers.layer_levels(hr_layer),
                        "degradation": degradation,
                    },
                    degradation=degradation,
                    old_lr=pair.lr if pair is not None else None,
                )
        pid = _layers.pair_id_of(lr_layer) if _layers.role_of(lr_layer) == "lr" else None
        pair = _layers.find_pair(self.viewer.layers, pid) if pid else None
        return _Request(
            lr_layer=lr_layer,
            pair_id=pid or _layers.new_pair_id(),
            kwargs={
                "lr_levels": _layers.layer_levels(lr_layer),
                "expect_scale": pair.scale if pair is not None and pair.hr is not None else None,
            },
        )

    def _finish(self, req: _Request, res: Prepared) -> Any:
        """Add the LR (if simulated) and SR layers for a finished background prepare."""
        source = req.hr_layer if req.hr_layer is not None else req.lr_layer
        if source not in self.viewer.layers:  # removed meanwhile, or the viewer closed
            self.status.setText("the image layer was removed; nothing added")
            return None
        if res.error:
            self.status.setText(f"failed: {res.error}")
            _dock.notify_error(f"Enhance: {res.error}")
            return None
        pyramid, s = res.pyramid, res.pyramid.scale
        lr_layer = req.lr_layer
        slide = _layers.slide_name(req.hr_layer if req.hr_layer is not None else lr_layer)
        extra: dict[str, Any] = {"slide": slide}
        if req.hr_layer is not None:
            hr = req.hr_layer
            how = "" if req.degradation == "clean" else f", {req.degradation}"
            name = _layers.role_name("lr", slide, f"simulated {s}x{how}")
            if req.old_lr is not None and req.old_lr in self.viewer.layers:
                lr_layer = req.old_lr  # the same layer, new pixels
                lr_layer.data = res.lr_levels
                lr_layer.name = name
            else:
                lr_layer = self.viewer.add_image(
                    res.lr_levels,
                    multiscale=True,
                    rgb=True,
                    name=name,
                    **_layers.lr_transform(hr, s),
                )
            _layers.mark(hr, "hr", req.pair_id, scale=s, slide=slide)
            _rename(hr, _layers.role_name("hr", slide))
            extra["degradation"] = req.degradation
        else:
            if _simulated_by(lr_layer):
                extra["degradation"] = _simulated_by(lr_layer)
            else:  # the user's own LR image: its name says so from now on
                _rename(lr_layer, _layers.role_name("lr", slide))
        _layers.mark(lr_layer, "lr", req.pair_id, scale=s, **extra)
        pair = _layers.find_pair(self.viewer.layers, req.pair_id)
        geometry = _layers.sr_transform(lr_layer, s)
        if pair is not None and pair.sr is not None:
            sr = pair.sr
            for key, value in geometry.items():
                setattr(sr, key, value)
            _layers.show_pyramid(sr, pyramid, model_path=req.model_path)
        else:
            sr = self.viewer.add_image(
                list(pyramid), multiscale=True, rgb=True, name="SR", **geometry
            )
            _layers.attach_pyramid(sr, pyramid)
            tag = {"model": pyramid.model.name, "slide": slide}
            if req.model_path:
                tag["model_path"] = req.model_path
            _layers.mark(sr, "sr", req.pair_id, scale=s, **tag)
        sr.name = self._sr_name(sr)
        if "mpp" in source.metadata:  # read from the file (None: it records none)
            mpp = source.metadata["mpp"]
            if req.hr_layer is not None:  # LR simulated from HR, SR on the HR grid
                _layers.set_pixel_size(lr_layer, mpp * s if mpp else None)
                _layers.set_pixel_size(sr, mpp)
            else:
                _layers.set_pixel_size(sr, mpp / s if mpp else None)
        self._select_layer(lr_layer if req.hr_layer is None else req.hr_layer)
        self._update_status()
        self.sr_ready.emit(sr)
        return sr

    def _sr_name(self, sr: Any) -> str:
        """'SR <model> · <slide>': role and model first (napari elides names in the middle);
        a stochastic model's sample is named by its seed ('SR sr3-he-x4 seed 3 · ...')."""
        pyramid = _layers.pyramid_of(sr)
        detail = pyramid.model.name
        if pyramid.model.descriptor.stochastic:
            detail += f" seed {pyramid.seed}"
        return _layers.role_name("sr", _layers.slide_name(sr), detail)

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
        self._show_model(Path(model) if tag.get("model_path") else model)
        if self.model_box.currentIndex() != before and self.model_box.currentData() == model:
            self._model_by_hand = True  # a model the layer was switched to, not a default

    def _on_active_layer(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        if active is not None and self.layer_box.findText(active.name) >= 0:
            self.layer_box.setCurrentText(active.name)

    # ---------------------------------------------------------------- models / devices
    def _on_layer_chosen(self, _text: str = "") -> None:
        """Show how the chosen layer is stored; let the default model follow it."""
        layer = self._chosen_layer()
        if layer is None:
            self.coding_label.setText("Stored as: -")
            self.coding_label.setToolTip("")
        else:
            size = ""
            if isinstance(layer.metadata, dict) and "mpp" in layer.metadata:  # a slide's
                mpp = layer.metadata["mpp"]
                size = (
                    f"; {float(mpp):.3g} um/px"
                    if mpp
                    else "; pixel size not recorded (no scale bar, sizes in pixels)"
                )
            self.coding_label.setText(f"Stored as: {_coding_text(layer)}{size}")
            self.coding_label.setToolTip(
                "How the file stores the pixels (read from its metadata): lossy JPEG / "
                "JPEG 2000 slides get the model trained on scanner degradation by default, "
                "losslessly stored ones the model trained on clean LR"
            )
        self._update_default_model()

    def _auto_model(self, layer: Any, preset: str | None) -> str:
        """The default model for LR simulated by `preset`, or (None) for `layer` itself."""
        if preset is None and _simulated_by(layer) is not None:
            preset = _simulated_by(layer)  # enhancing a simulated LR layer again
        codec = layer_coding(layer).codec if layer is not None else None
        return default_model_name(self._models, codec=codec, preset=preset)

    def _update_default_model(self) -> None:
        """Select the default model in the Model box, unless one was picked by hand."""
        if self._model_by_hand or self._models is None:
            return  # before the probe the box holds "default", resolved at Enhance
        name = self._auto_model(self._chosen_layer(), self.simulate_preset)
        index = self.model_box.findData(name)
        if index >= 0:
            self.model_box.setCurrentIndex(index)
            self._model_index = index

    def _on_probe(self, info: dict[str, Any]) -> None:
        """Fill the model list (bundled, then files loaded so far) and the auto device."""
        chosen = self.model_box.currentData()
        files = [
            (self.model_box.itemText(i), self.model_box.itemData(i))
            for i in range(self.model_box.count())
            if self.model_box.itemData(i) not in (None, LOAD_FILE)
        ]
        self.model_box.clear()
        for m in info["models"]:
            kind, speed = m.get("kind", "deterministic"), m.get("speed", "fast")
            self.model_box.addItem(f"{m['name']}  ({kind}, x{m['scale']}, {speed})", m["name"])
            index = self.model_box.count() - 1
            tip = m["description"] if m["available"] else "weights not installed"
            if kind == "zero-shot":
                tip += "; train it on the view with Fine-tune's 'Zero-shot on this view'"
            self.model_box.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
            if not m["available"]:
                model = self.model_box.model()
                assert isinstance(model, QStandardItemModel)
                item = model.item(index)
                assert item is not None
                item.setEnabled(False)
        for text, path in files:
            self.model_box.addItem(text, path)
        self.model_box.addItem(LOAD_FILE, LOAD_FILE)
        self._models = info["models"]
        if self._model_by_hand and chosen is not None:
            default = chosen
        else:
            default = self._auto_model(self._chosen_layer(), self.simulate_preset)
        self.model_box.setCurrentIndex(max(0, self.model_box.findData(default)))
        self._model_index = self.model_box.currentIndex()
        self._auto_device = info["auto"]
        self.device_box.setItemText(0, f"auto ({self._auto_device})")
        self.status.setText(f"ready; auto device is {self._auto_device}")

    def _show_model(self, model: Any) -> None:
        """Select `model` (a bundled name or a file path) in the list, adding a file."""
        if not isinstance(model, str | os.PathLike):
            return
        key = str(model)
        index = self.model_box.findData(key)
        if index < 0 and _is_path(model):
            index = self.model_box.findData(LOAD_FILE)
            self.model_box.insertItem(index, Path(key).name, key)
            self.model_box.setItemData(index, key, Qt.ItemDataRole.ToolTipRole)
        if index >= 0:
            self.model_box.setCurrentIndex(index)
            self._model_index = index

    def _forget_model(self, model: Any) -> None:
        """A model that failed to load: drop its file from the list and show again the
        model the SR layer really uses."""
        if not _workers.alive(self):
            return
        path = _model_path(model)
        index = self.model_box.findData(path) if path is not None else -1
        if index >= 0:
            self.model_box.removeItem(index)
        by_hand = self._model_by_hand
        self.model_box.setCurrentIndex(-1)  # so that the layer's model is selected anew
        self._model_index = -1
        self._show_sr_model()
        self._model_by_hand = by_hand

    def _on_model_activated(self, index: int) -> None:
        previous = self._model_index
        if self.model_box.itemData(index) == LOAD_FILE:
            path, _ = QFileDialog.getOpenFileName(
                self, "Load a model", "", "Model files (*.safetensors);;All files (*)"
            )
            if not path:
                self.model_box.setCurrentIndex(self._model_index)
                return
            self._show_model(Path(path))
            self._model_index = -1  # a new choice: switch the SR layer below
        if self.model_box.currentIndex() != self._model_index:
            sr = self._current_sr()
            if sr is not None and _is_busy(sr):  # a fine-tune runs on it: keep the old choice
                self.set_model(self.model_box.currentData())  # refuses, with a warning
                self._model_index = previous
                self.model_box.setCurrentIndex(previous)
                return
            self._model_index = self.model_box.currentIndex()
            self._model_by_hand = True
            self.set_model(self.model_box.currentData())

    def _update_status(self) -> None:
        sr = self._current_sr()
        pyramid = _layers.pyramid_of(sr) if sr is not None else None
        if pyramid is None or self._workers:
            return
        st = pyramid.stats
        rate = (
            f"{st.mean_tile_s:.2f} s/tile, {st.mpx_per_s:.1f} Mpx/s" if st.tiles_computed else "-"
        )
        self.status.setText(
            f"{pyramid.predictor.device_name} | {pyramid.model.name} | tiles: "
            f"{st.tiles_computed} computed, {st.pending} pending, "
            f"{st.cache_hits} cache hits | {rate}"
        )


def _simulated_by(layer: Any) -> str | None:
    """The preset a simulated LR layer was made with (None for other layers)."""
    tag = getattr(layer, "metadata", {}).get(_layers.META_KEY)
    if not isinstance(tag, dict) or tag.get("role") != "lr":
        return None
    return tag.get("degradation")


def _coding_text(layer: Any) -> str:
    """'JPEG Q=30 (quantisation tables) — lossy', 'lossless (LZW)', 'simulated LR
    (scanner)' or 'unknown' for a layer."""
    preset = _simulated_by(layer)
    if preset is not None:
        return f"simulated LR ({'clean D_s' if preset == 'clean' else preset})"
    coding = layer_coding(layer)
    if coding.codec == "unknown":
        return "unknown" + (f" ({coding.detail})" if coding.detail else " (not read from a file)")
    return f"{coding} — lossy" if coding.lossy else str(coding)


def _model_path(model: Any) -> str | None:
    """The file a model choice names (a .safetensors path), or None for bundled names."""
    return os.fspath(model) if _is_path(model) else None


def _rename(layer: Any, name: str) -> None:
    if layer.name != name:
        layer.name = name


def _is_busy(sr_layer: Any) -> bool:
    """True while the Fine-tune widget trains on this SR layer (its tag says "busy")."""
    tag = getattr(sr_layer, "metadata", {}).get(_layers.META_KEY)
    return isinstance(tag, dict) and bool(tag.get("busy"))


def _probe_gen() -> Generator[str, None, dict[str, Any]]:
    yield "looking for models and devices ..."
    try:
        return _probe()
    except Exception:  # noqa: BLE001 - fall back to the weight-free model
        log.debug("probe failed", exc_info=True)
        return {"models": [{"name": "bicubic-x4", "available": True}], "auto": "cpu"}


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
