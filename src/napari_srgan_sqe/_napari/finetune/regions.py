"""The Fine-tune widget's regions: the Shapes layer the rectangles are drawn in (found
or made, in the images' units, kept above them), its rectangles in LR level-0 px, and
the part of the LR layer in view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_srgan_sqe._napari import _layers

__all__ = ["SHAPES_NAME", "RegionsLayer", "view_region"]

SHAPES_NAME = "Fine-tune regions"

Rect = tuple[int, int, int, int]


class RegionsLayer:
    """The viewer's Shapes layer of regions; `on_change` is called when its data or
    selection changes."""

    def __init__(self, viewer: Any, on_change: Callable[..., None]) -> None:
        self.viewer = viewer
        self.layer: Any = None
        """The layer watched (None before one is found or made)."""
        self._on_change = on_change

    def get(self) -> Any:
        """The Shapes layer of regions; created if there is none, in pan-zoom mode and
        not selected, so that dragging still pans the slide ("Draw rectangles" draws)."""
        layers = self.viewer.layers
        if self.layer is not None and self.layer in layers:
            return self.layer
        shapes = self.candidates()
        named = [lay for lay in shapes if lay.name == SHAPES_NAME]
        layer = (named or shapes[::-1] or [None])[0]
        if layer is None:
            units = self.image_units()  # the images' (e.g. um): napari warns on a mix
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
        self._watch(layer)
        return layer

    def current(self) -> Any:
        """The layer watched if it is still in the viewer, else None (and forgotten)."""
        if self.layer is not None and self.layer not in self.viewer.layers:
            self.layer = None
        return self.layer

    def _watch(self, layer: Any) -> None:
        if layer is self.layer:
            return
        self.layer = layer
        layer.events.data.connect(self._on_change)
        layer.events.highlight.connect(self._on_change)

    def draw(self) -> None:
        """Select the regions layer, bring it to the top, and switch to add-rectangle.

        Rectangles are drawn in one view: napari's grid (Compare's side by side) is
        switched off, and the Compare widget follows with its overlay layout.
        """
        layer = self.get()
        grid = _layers.grid_of(self.viewer)
        if grid.enabled:
            grid.enabled = False
        layer.visible = True
        self.raise_to_top()
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"

    def candidates(self) -> list[Any]:
        """The viewer's Shapes layers."""
        return [x for x in self.viewer.layers if type(x).__name__ == "Shapes"]

    def has_images(self) -> bool:
        return any(type(x).__name__ == "Image" for x in self.viewer.layers)

    def image_units(self) -> Any:
        """The units the image layers share (e.g. ('micrometer', 'micrometer')), or None."""
        units = {
            tuple(str(u) for u in layer.units[-2:])
            for layer in self.viewer.layers
            if type(layer).__name__ == "Image" and getattr(layer, "units", None) is not None
        }
        return next(iter(units)) if len(units) == 1 else None

    def match_units(self) -> None:
        """Give the layer the images' units (napari warns about layers in different units)."""
        shapes, units = self.layer, self.image_units()
        if shapes is None or units is None or getattr(shapes, "units", None) is None:
            return
        if tuple(str(u) for u in shapes.units[-2:]) != units:
            shapes.units = units

    def raise_to_top(self) -> None:
        """Move the layer above the others (else rectangles hide under new images)."""
        layers, shapes = self.viewer.layers, self.layer
        if shapes is not None and shapes in layers and layers.index(shapes) != len(layers) - 1:
            layers.move(layers.index(shapes), len(layers))

    def regions(self, lr_layer: Any) -> list[Rect]:
        """Rectangles (x, y, w, h) in LR level-0 px: the selected ones, or all; clipped."""
        shapes = self.get()
        rects = _rectangles(shapes, lr_layer)
        chosen = [rects[i] for i in sorted(shapes.selected_data) if i in rects]
        return chosen or list(rects.values())

    def summary(self, lr_layer: Any) -> str:
        """How many rectangles, their area, and the selected ones (training uses those)."""
        shapes = self.layer
        rects = _rectangles(shapes, lr_layer)
        sel = [rects[i] for i in shapes.selected_data if i in rects]
        area = sum(r[2] * r[3] for r in rects.values())
        text = f"{len(rects)} rectangle(s), {area / 1e6:.3f} LR Mpx"
        if sel:
            sel_area = sum(r[2] * r[3] for r in sel)
            text += f"; {len(sel)} selected ({sel_area / 1e6:.3f} Mpx): training uses those"
        return text


def view_region(viewer: Any, lr: Any, max_side: int) -> Rect:
    """The LR level-0 rectangle (x, y, w, h) of the LR layer `lr` in view, at most
    `max_side` px a side around the view's centre."""
    import numpy as np

    height, width = (int(v) for v in _layers.layer_levels(lr)[0].shape[:2])
    y_min, x_min, y_max, x_max = _layers.view_rect_world(viewer)  # one grid cell's
    lo = np.asarray(lr.world_to_data((y_min, x_min)))[-2:] + 0.5  # pixel edges
    hi = np.asarray(lr.world_to_data((y_max, x_max)))[-2:] + 0.5
    (y0, x0), (y1, x1) = np.maximum(lo, 0), np.minimum(hi, (height, width))
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    h, w = min(y1 - y0, max_side), min(x1 - x0, max_side)
    y = int(np.clip(round(cy - h / 2), 0, max(0, height - h)))
    x = int(np.clip(round(cx - w / 2), 0, max(0, width - w)))
    return x, y, int(min(w, width - x)), int(min(h, height - y))


def _rectangles(shapes: Any, lr_layer: Any) -> dict[int, Rect]:
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
