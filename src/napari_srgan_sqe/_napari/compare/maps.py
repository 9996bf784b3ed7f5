"""Honest SR in Compare (docs/honest-sr.md): the map layers, their legend and workers.

"Where SR departs from the scan" is a colour-mapped layer of the pair's SR
(`inference.diagnostics.LiveDeparture`: how much SR changes when the slide is turned,
computed in the background for the view from the SR the viewer computed; `LiveMap`
refreshes the layer as pieces land); "Uncertainty (N samples)" super-resolves the
view with N seeds in a thread worker (`spread_gen`, `SpreadJob`) and shows the spread
of the samples. Both layers carry `metadata[MAP_KEY] = {"kind": "departure" |
"uncertainty", "pair_id"}` (`map_kind`, `map_layers`), lie on SR's pixel grid, and
have a `Legend` that reads their contrast limits. `panel.MapPanel` drives them.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from napari_srgan_sqe._napari import _layers, _workers
from napari_srgan_sqe.inference.readouts import CropBox, read_crop

log = logging.getLogger(__name__)

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


def map_layers(layers: Iterable[Any], pair_id: str | None, kind: str | None = None) -> list[Any]:
    """The map layers of a pair among `layers` (departure first, then uncertainty)."""
    if pair_id is None:
        return []
    found = [x for x in layers if map_tag(x).get("pair_id") == pair_id and map_kind(x) in MAP_ROLES]
    order = list(MAP_ROLES)
    found.sort(key=lambda x: order.index(str(map_kind(x))))
    return [x for x in found if kind is None or map_kind(x) == kind]


def members(layers: Iterable[Any], pair: _layers.LayerPair) -> list[Any]:
    """The layers of the side-by-side grid, left to right: LR, SR, the maps, HR."""
    head = [x for x in (pair.lr, pair.sr) if x is not None]
    return head + map_layers(layers, pair.pair_id) + ([pair.hr] if pair.hr is not None else [])


def real_layer(layer: Any) -> Any:
    """The layer behind a plugin's proxy (the viewer hands plugins proxies), for weak keys."""
    return getattr(layer, "__wrapped__", layer)


def map_tag(layer: Any) -> dict:
    tag = getattr(layer, "metadata", {}).get(MAP_KEY) if layer is not None else None
    return tag if isinstance(tag, dict) else {}


def map_kind(layer: Any) -> str | None:
    """'departure' or 'uncertainty' for this widget's map layers, else None."""
    return map_tag(layer).get("kind")


def map_name(kind: str, pair: _layers.LayerPair, detail: str) -> str:
    """'Departure srgan-sqe-he-x4 · CMU-1', like `_layers.role_name`: the role first."""
    slide = _layers.slide_name(pair.sr) if pair.sr is not None else ""
    head = f"{MAP_ROLES[kind]} {detail}".strip()
    return f"{head} · {slide}" if slide else head


def departure_refusal(pyramid: Any) -> str | None:
    """Why the departure map cannot be shown for this SR pyramid (None: it can)."""
    if pyramid is None:
        return "no SR layer made by Enhance"
    if pyramid.model.descriptor.stochastic:
        return (
            f"{pyramid.model.name} is stochastic: its samples differ anyway; use "
            "Uncertainty to see where it is guessing"
        )
    return None


def same_grid(layer: Any) -> dict[str, Any]:
    """scale, translate (and units) of `layer`'s last two axes: the same pixel grid."""
    out: dict[str, Any] = {
        "scale": tuple(float(v) for v in layer.scale[-2:]),
        "translate": tuple(float(v) for v in layer.translate[-2:]),
    }
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = tuple(str(u) for u in units[-2:])
    return out


def um_per_px(layer: Any) -> float | None:
    """The layer's pixel size in um (`_layers.pixel_size_um`), None when unknown."""
    return _layers.pixel_size_um(layer.metadata, layer.scale, getattr(layer, "units", None))


_COLORMAP: Any = None


def map_colormap() -> Any:
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


def canvas_rgb(viewer: Any) -> tuple[float, float, float]:
    """The colour (0-1) of the viewer's canvas in its theme: what a map's own grid cell
    shows where the map is clear (black for an unknown theme, napari's default)."""
    try:
        from napari.utils.theme import get_theme

        canvas = get_theme(viewer.theme).canvas.as_rgb_tuple()
        r, g, b = (v / 255.0 for v in canvas[:3])
    except Exception:  # noqa: BLE001 - an unknown theme: napari's default canvas
        return (0.0, 0.0, 0.0)
    return (r, g, b)


class Legend(QWidget):
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
        if old is not (real_layer(layer) if layer is not None else None):
            if old is not None:
                for emitter in (old.events.contrast_limits, old.events.colormap):
                    try:
                        emitter.disconnect(self._update)
                    except (TypeError, ValueError, RuntimeError):
                        pass
            if layer is not None:
                layer.events.contrast_limits.connect(self._update)
                layer.events.colormap.connect(self._update)
            self._layer = weakref.ref(real_layer(layer)) if layer is not None else None
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


def spread_limits(values: Any) -> tuple[float, float]:
    """Colour scale of an uncertainty map: from the view's 5th to its 99.5th percentile
    of spread, in whole grey levels (below 1 grey level counts as clear: 0)."""
    import numpy as np

    if not values.size:
        return 0.0, 1.0
    q_lo, q_hi = (float(v) for v in np.quantile(values, UNCERTAINTY_RANGE))
    lo = float(np.floor(q_lo)) if q_lo >= 1.0 else 0.0
    return lo, max(lo + 1.0, float(np.ceil(q_hi)))


class LiveMap:
    """A departure layer's background computation, and the relay that refreshes the
    layer on the GUI thread as pieces of the map land."""

    def __init__(self, layer: Any, live: Any, on_failed: Any) -> None:
        class _Relay(QObject):
            fire = Signal(str)

        self.live = live
        self.layer = weakref.ref(real_layer(layer))
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
class SpreadJob:
    """A running uncertainty sampling: its worker, stop event, view box and progress bar."""

    worker: Any
    stop: threading.Event
    box: CropBox
    pair_id: str
    n: int
    model: str
    bar: Any


def spread_gen(
    lr0: Any,
    model: Any,
    region: tuple[int, int, int, int],
    seeds: tuple[int, ...],
    device: str,
    tile: int,
    stop: threading.Event,
    hr_box: tuple[Any, CropBox] | None = None,
) -> Generator[Any, None, None]:
    """The uncertainty worker: samples done (ints), then the `SpreadResult`; a failure
    as a message. With (HR level 0, the view's box) each sample is scored against HR."""
    from napari_srgan_sqe.inference.diagnostics import iter_spread

    try:
        ref = None
        if hr_box is not None:
            hr0, b = hr_box
            ref, _ = read_crop(hr0, b.y0, b.y1, b.x0, b.x1)
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
