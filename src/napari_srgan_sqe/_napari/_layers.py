"""Layer roles, LR / SR / HR pairs, their geometry, and field-of-view crops.

Shared by the Enhance, Compare and Fine-tune widgets. A *pair* is the set of layers
that show one image at low resolution (LR), super-resolved (SR) and, when the LR was
simulated, at the original resolution (HR). Each member carries
`layer.metadata["srgan_sqe"] = {"role": "lr" | "sr" | "hr", "pair_id": str, "scale": int}`
(SR layers also `"model"`, and `"model_path"` when the model came from a file;
every member `"slide"`, the image's own name), which survives saving the layer list
and needs no registry: `find_pair(viewer.layers)` reads it back.

Names lead with the role: "LR simulated 4x · <slide>", "SR <model> · <slide>",
"HR <slide>" (`role_name`), so napari's layer list, which elides long names in the
middle, and the captions of the grid cells, cut at the cell's edge, say which is which.

Geometry (docs/architecture.md, pixel-centre convention): with HR of pixel size `p`
at translate `t`, LR has scale `s p` and translate `t + (s - 1) / 2 p`; SR has HR's
geometry. Without HR, SR is placed from LR: scale `p_lr / s`, translate
`t_lr - (s - 1) / (2 s) p_lr`. SR level 0 is therefore always the "HR pixel grid" on
which field-of-view crops are taken.

Nothing here touches torch or dask at import, nor the viewer from a worker thread:
`fov_box` runs on the GUI thread. `CropBox`, `read_crop` and `crop_margins` live in
`inference.readouts` (no Qt) and are re-exported here.
"""

from __future__ import annotations

import math
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_srgan_sqe.degradation import lr_translate
from napari_srgan_sqe.inference.readouts import CropBox, crop_margins, read_crop

__all__ = [
    "META_KEY",
    "CropBox",
    "LayerPair",
    "attach_pyramid",
    "crop_margins",
    "find_pair",
    "find_pairs",
    "fov_box",
    "grid_of",
    "layer_data",
    "layer_levels",
    "lr_transform",
    "mark",
    "new_pair_id",
    "pair_id_of",
    "pyramid_of",
    "read_crop",
    "rgb_image_layers",
    "role_name",
    "role_of",
    "show_caption",
    "show_pyramid",
    "slide_name",
    "sr_transform",
    "view_rect_world",
]

META_KEY = "srgan_sqe"
ROLES = ("lr", "sr", "hr")
MAX_CROP = 1024
"""Largest side (HR px) of a field-of-view crop; larger views use their centre."""


# ------------------------------------------------------------------ roles and pairs
def new_pair_id() -> str:
    """A fresh, short pair identifier."""
    return uuid.uuid4().hex[:8]


def mark(layer: Any, role: str, pair_id: str, *, scale: int, **extra: Any) -> None:
    """Tag `layer` as the `role` member of pair `pair_id` (emits `events.metadata`)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    meta = dict(layer.metadata)
    meta[META_KEY] = {"role": role, "pair_id": pair_id, "scale": int(scale), **extra}
    layer.metadata = meta


def pixel_size_um(metadata: Any, scale: Any, units: Any = None) -> float | None:
    """A layer's pixel size in um, from its metadata, scale and units (napari >= 0.6).

    The metadata's "mpp" wins when the key is there, also as None: this plugin's reader
    records it for every slide (None: the file records none), and the Enhance widget
    for the LR and SR layers it makes. Else a scale in length units; else a scale other
    than 1 taken as um (napari calls every unit "pixel" unless told)."""
    from napari_srgan_sqe.io._formats import to_um

    md = metadata if isinstance(metadata, dict) else {}
    if "mpp" in md:
        return float(md["mpp"]) if md["mpp"] else None
    if scale is None:
        return None
    last = float(scale[-1])
    from_units = to_um(last, str(units[-1])) if units is not None and len(units) else None
    if from_units:
        return float(from_units)
    return last if last not in (0.0, 1.0) else None


def set_pixel_size(layer: Any, mpp: float | None) -> None:
    """Record `mpp` (um per pixel, or None: not known) in the layer's metadata."""
    meta = dict(layer.metadata)
    meta["mpp"] = mpp
    layer.metadata = meta


ROLE_LABELS = {"lr": "LR", "sr": "SR", "hr": "HR"}


def role_name(role: str, slide: str = "", detail: str = "") -> str:
    """A layer name that leads with its role, then what tells it apart, then the image:
    'SR srgan-sqe-he-x4 · CMU-1', 'LR simulated 4x, scanner · CMU-1', 'HR CMU-1'.

    The role and detail come first because a grid cell's caption is cut at its right
    edge and napari's layer list elides long names in the middle.
    """
    head = " ".join(x for x in (ROLE_LABELS[role], detail) if x)
    return f"{head} · {slide}" if slide and detail else " ".join(x for x in (head, slide) if x)


def slide_name(layer: Any) -> str:
    """The image's own name: the pair tag's "slide", else the layer name less a role word."""
    tag = _tag(layer)
    if isinstance(tag.get("slide"), str):
        return tag["slide"]
    name = str(getattr(layer, "name", ""))
    word, _, rest = name.partition(" ")
    if word not in ROLE_LABELS.values():
        return name
    return rest.rpartition(" · ")[2]  # 'HR x' -> 'x', 'SR m · x' -> 'x', 'HR' -> ''


def show_caption(layer: Any, visible: bool = True) -> bool:
    """Show the layer's name in its own view (its grid cell; top left), as a caption.

    Uses napari's per-layer name overlay (napari >= 0.6); returns False without it.
    """
    overlay = getattr(layer, "name_overlay", None)
    if overlay is None:
        return False
    if visible:
        overlay.font_size = 11
        overlay.color = "white"
        overlay.box = True
        overlay.box_color = (0.0, 0.0, 0.0, 0.6)
    overlay.visible = visible
    return True


def _tag(layer: Any) -> dict:
    tag = getattr(layer, "metadata", {}).get(META_KEY)
    return tag if isinstance(tag, dict) else {}


def role_of(layer: Any) -> str | None:
    """'lr', 'sr', 'hr' or None for a layer that belongs to no pair."""
    return _tag(layer).get("role")


def pair_id_of(layer: Any) -> str | None:
    """The pair a layer belongs to, or None."""
    return _tag(layer).get("pair_id")


@dataclass(frozen=True)
class LayerPair:
    """The layers of one pair (any may be missing) and the SR factor `scale`."""

    pair_id: str
    scale: int
    lr: Any = None
    sr: Any = None
    hr: Any = None

    @property
    def layers(self) -> list[Any]:
        """Present members, in display order LR, SR, HR."""
        return [x for x in (self.lr, self.sr, self.hr) if x is not None]


def find_pairs(layers: Iterable[Any]) -> dict[str, LayerPair]:
    """Every pair in `layers`, by pair id, in layer-list order; the last of a role wins."""
    found: dict[str, dict[str, Any]] = {}
    for layer in layers:
        tag = _tag(layer)
        if tag.get("role") in ROLES and tag.get("pair_id"):
            entry = found.setdefault(tag["pair_id"], {"scale": int(tag.get("scale", 4))})
            entry[tag["role"]] = layer
    return {
        pid: LayerPair(pid, e.pop("scale"), **{r: e.get(r) for r in ROLES})
        for pid, e in found.items()
    }


def find_pair(layers: Iterable[Any], which: Any = None) -> LayerPair | None:
    """The pair of a layer or pair id `which`; by default the topmost pair with an SR layer.

    Returns None when there is no such pair.
    """
    pairs = find_pairs(layers)
    if which is not None:
        pid = which if isinstance(which, str) else pair_id_of(which)
        return pairs.get(pid) if pid else None
    with_sr = [p for p in pairs.values() if p.sr is not None]
    if with_sr:
        return with_sr[-1]
    return list(pairs.values())[-1] if pairs else None


# ------------------------------------------------------------------ SR layers and their engine
_PYRAMIDS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _unwrap(layer: Any) -> Any:
    return getattr(layer, "__wrapped__", layer)  # a plugin's viewer hands out proxies


def attach_pyramid(sr_layer: Any, pyramid: Any) -> None:
    """Remember the `SRPyramid` behind `sr_layer` (kept alive as long as the layer).

    The pyramid is switched to placeholder mode (the viewer's): the layer shows a
    tinted bicubic placeholder where SR is not computed yet, never waits for the
    network, and is refreshed as the SR of the view lands; work in progress shows in
    napari's activity dock. The layer is given the pyramid's levels if it shows
    others. GUI thread.
    """
    layer = _unwrap(sr_layer)
    _PYRAMIDS[layer] = pyramid
    if not hasattr(pyramid, "set_placeholder"):
        return
    pyramid.set_placeholder(True)
    if not any(isinstance(fn, _LiveView) and fn.layer() is layer for fn in pyramid.listeners):
        pyramid.listeners[:] = [fn for fn in pyramid.listeners if not isinstance(fn, _LiveView)]
        pyramid.listeners.append(_LiveView(layer, pyramid))
    _show_levels(sr_layer, pyramid)


def _show_levels(sr_layer: Any, pyramid: Any) -> None:
    """Give the layer the pyramid's levels unless it shows them already."""
    data = layer_data(sr_layer)
    if len(data) != len(pyramid) or any(a is not b for a, b in zip(data, pyramid)):
        sr_layer.data = list(pyramid)


class _LiveView:
    """Refreshes an SR layer on the GUI thread when SR of its view lands, and shows
    the work in napari's activity dock (an indeterminate progress bar)."""

    def __init__(self, layer: Any, pyramid: Any) -> None:
        from qtpy.QtCore import QObject, Qt, Signal

        class _Relay(QObject):
            fire = Signal(str)

        self.pyramid = weakref.ref(pyramid)
        self.layer = weakref.ref(layer, self._layer_gone)
        self._bar: Any = None
        self._relay = _Relay()
        self._relay.fire.connect(self._on_event, Qt.ConnectionType.QueuedConnection)

    def __call__(self, event: str = "landed") -> None:  # any thread
        try:
            self._relay.fire.emit(event)
        except RuntimeError:  # the Qt object is gone (viewer closed)
            pass

    def _on_event(self, event: str) -> None:  # GUI thread
        layer, pyramid = self.layer(), self.pyramid()
        live = getattr(pyramid, "live", None)
        if layer is None or live is None:
            self._layer_gone()
            return
        if event == "landed" and layer.visible:
            layer.refresh(thumbnail=False, highlight=False, extent=False)
        if live.busy and event != "failed":
            if self._bar is None:
                from napari.utils import progress

                self._bar = progress(total=0, desc="SR of the view (tinted: bicubic placeholder)")
        else:
            self._close_bar()

    def _layer_gone(self, _ref: Any = None) -> None:
        """The layer is gone: drop the work queued for it."""
        live = getattr(self.pyramid(), "live", None)
        if live is not None:
            live.cancel(count=_ref is None)
        if _ref is None:  # GUI thread (a weakref callback may run in any thread)
            self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def layer_data(layer: Any) -> list[Any]:
    """The levels a layer shows, finest first (its `data`, as a list)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        return [data[i] for i in range(len(data))]
    return [data]


def pyramid_of(sr_layer: Any) -> Any:
    """The `SRPyramid` behind an SR layer (its `.stats`, `.model`, `.set_model`), or None."""
    return _PYRAMIDS.get(_unwrap(sr_layer))


def show_pyramid(sr_layer: Any, pyramid: Any = None, *, model_path: Any = None) -> None:
    """Point `sr_layer` at its pyramid's current arrays, e.g. after `set_model` (GUI thread).

    `set_model` builds new dask arrays, so the layer must be given them again; this
    also records the model's name, and `model_path` (the file it was read from or
    saved to; None for a bundled model), in the layer's pair tag (emits
    `events.metadata`), which the Enhance widget's Model box follows.
    """
    pyramid = pyramid if pyramid is not None else pyramid_of(sr_layer)
    if pyramid is None:
        raise ValueError(f"layer {sr_layer.name!r} is not an SR layer made by this plugin")
    attach_pyramid(sr_layer, pyramid)
    _show_levels(sr_layer, pyramid)  # a no-op when attach_pyramid gave them already
    tag = _tag(sr_layer)
    if tag:
        extra = {k: v for k, v in tag.items() if k not in ("role", "pair_id", "scale")}
        extra["model"] = pyramid.model.name
        extra.pop("model_path", None)
        if model_path is not None:
            extra["model_path"] = str(model_path)
        mark(sr_layer, tag["role"], tag["pair_id"], scale=tag["scale"], **extra)


# ------------------------------------------------------------------ layers and geometry
def layer_levels(layer: Any) -> list[Any]:
    """A layer's data as a list of levels, finest first (one level if not multiscale).

    For an SR layer made by this plugin: its pyramid's exact levels (level 0 blocks
    until the SR is computed), never the placeholders the layer may show.
    """
    pyramid = pyramid_of(layer)
    if pyramid is not None and hasattr(pyramid, "exact_levels"):
        return pyramid.exact_levels()
    return layer_data(layer)


def rgb_image_layers(layers: Iterable[Any]) -> list[Any]:
    """Image layers holding 2-D RGB data (candidates for LR or HR)."""
    from napari.layers import Image

    out = []
    for layer in layers:
        if not isinstance(layer, Image) or not layer.rgb:
            continue
        shape = layer_levels(layer)[0].shape
        if len(shape) == 3 and shape[-1] == 3:
            out.append(layer)
    return out


def _geometry(like: Any, scale: Any, translate: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"scale": tuple(scale), "translate": tuple(translate)}
    units = getattr(like, "units", None)  # napari >= 0.6: keep um when the source has them
    if units is not None:
        out["units"] = tuple(str(u) for u in units[-2:])
    return out


def lr_transform(hr_layer: Any, scale: int) -> dict[str, Any]:
    """napari `scale`, `translate` (and `units`) of an LR layer simulated from `hr_layer`."""
    p = np.asarray(hr_layer.scale[-2:], dtype=float)
    t = np.asarray(hr_layer.translate[-2:], dtype=float)
    return _geometry(hr_layer, scale * p, t + lr_translate(scale) * p)


def sr_transform(lr_layer: Any, scale: int) -> dict[str, Any]:
    """napari `scale`, `translate` (and `units`) of the SR layer of `lr_layer` (HR geometry)."""
    p = np.asarray(lr_layer.scale[-2:], dtype=float)
    t = np.asarray(lr_layer.translate[-2:], dtype=float)
    return _geometry(lr_layer, p / scale, t - lr_translate(scale) / scale * p)


# ------------------------------------------------------------------ field of view
def _camera(viewer: Any) -> Any:
    scene = getattr(viewer, "scene", None)  # napari >= 0.9
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def grid_of(viewer: Any) -> Any:
    """napari's grid settings (`canvas.grid` on napari >= 0.9, else `viewer.grid`)."""
    return viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid


def _viewbox_size(viewer: Any) -> tuple[float, float]:
    """(height, width) in screen px of the canvas, or of one grid cell in grid mode."""
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None and hasattr(canvas, "viewbox_size"):  # napari >= 0.9
        h, w = canvas.viewbox_size(viewer.layers)
        return float(h), float(w)
    h, w = viewer._canvas_size  # older napari
    if viewer.grid.enabled:
        rows, cols = viewer.grid.actual_shape(len(viewer.layers))
        h, w = h / rows, w / cols
    return float(h), float(w)


def view_rect_world(viewer: Any) -> tuple[float, float, float, float]:
    """(y_min, x_min, y_max, x_max) of what one view shows, in world units (2-D view)."""
    cam = _camera(viewer)
    cy, cx = (float(c) for c in cam.center[-2:])
    zoom = float(cam.zoom)
    h, w = _viewbox_size(viewer)
    hy, hx = h / (2 * zoom), w / (2 * zoom)
    return cy - hy, cx - hx, cy + hy, cx + hx


def _axis_range(lo: float, hi: float, n: int, s: int, max_side: int, min_side: int):
    """Pixel range [a, b) covering data coords [lo, hi], snapped to s, clipped to n."""
    a, b = math.floor(lo + 0.5), math.ceil(hi + 0.5)
    a, b = max(0, (a // s) * s), min(n, -(-b // s) * s)
    capped = False
    if b - a > max_side:
        centre = (a + b) / 2
        a = int(round((centre - max_side / 2) / s)) * s
        a, b, capped = a, a + max_side, True
    elif b - a < min_side:
        centre = (a + b) / 2 if b > a else (lo + hi) / 2
        a = int(round((centre - min_side / 2) / s)) * s
        b = a + min_side
    shift = max(0, -a) - max(0, b - n)  # slide back inside [0, n)
    a, b = max(0, a + shift), min(n, b + shift)
    return a, b, capped


def fov_box(
    viewer: Any, pair: LayerPair, *, max_side: int = MAX_CROP, min_side: int | None = None
) -> CropBox | None:
    """The crop of SR level 0 under the current view (centre `max_side` px at most).

    `min_side` (default 11 LR px, what SSIM needs) grows small views around their
    centre. None when there is no SR layer or the view misses the image. GUI thread.
    """
    if pair.sr is None:
        return None
    s = int(pair.scale)
    min_side = 11 * s if min_side is None else min_side
    max_side = max(s, (max_side // s) * s)
    h, w = layer_levels(pair.sr)[0].shape[:2]
    h, w = (h // s) * s, (w // s) * s
    y_min, x_min, y_max, x_max = view_rect_world(viewer)
    corners = [pair.sr.world_to_data((y, x))[-2:] for y in (y_min, y_max) for x in (x_min, x_max)]
    ys, xs = [c[0] for c in corners], [c[1] for c in corners]
    if max(ys) < -0.5 or max(xs) < -0.5 or min(ys) > h - 0.5 or min(xs) > w - 0.5:
        return None
    y0, y1, cap_y = _axis_range(min(ys), max(ys), h, s, max_side, min_side)
    x0, x1, cap_x = _axis_range(min(xs), max(xs), w, s, max_side, min_side)
    if y1 - y0 < s or x1 - x0 < s:
        return None
    return CropBox(y0, y1, x0, x1, s, cap_y or cap_x)
