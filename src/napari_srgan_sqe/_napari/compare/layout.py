"""How Compare lays a pair out in the viewer: side by side (napari's grid, LR | SR |
the maps | HR from the left) or overlaid (SR over HR, the maps over SR)."""

from __future__ import annotations

from typing import Any

from napari_srgan_sqe._napari import _layers
from napari_srgan_sqe._napari.compare.maps import map_layers, members


def lay_out(
    viewer: Any, pair: _layers.LayerPair, *, side_by_side: bool, opacity: float, hidden: list[Any]
) -> None:
    """Stack, show and grid the layers of `pair` (its SR layer must exist).

    Side by side, the layer list reads LR, SR, the maps, HR from the top, as the grid
    does from the left (napari's grid with a negative stride puts the topmost layer
    first), and every other visible layer is hidden; overlaid, SR is drawn over HR at
    `opacity` (0-1). `hidden` holds the layers the last layout hid: they are shown
    again, and it is refilled with those this one hides. Each member gets its caption.
    """
    assert pair.sr is not None
    layers = viewer.layers
    grid = _layers.grid_of(viewer)
    if side_by_side:
        cells = members(layers, pair)  # LR, SR, maps, HR: the grid's cells from the left
        stacking = cells[::-1]  # LR ends on top of the list
    else:
        maps = map_layers(layers, pair.pair_id)
        cells = [x for x in (pair.lr, pair.hr, pair.sr) if x] + maps
        stacking = cells  # SR drawn over HR, the maps over SR
    for layer in stacking:  # move to the top, in order
        layers.move(layers.index(layer), len(layers))
    show_again(viewer, hidden)
    if side_by_side:
        hidden.extend(x for x in layers if x.visible and x not in cells)
        for layer in [*hidden, *cells]:
            layer.visible = layer in cells
        pair.sr.opacity = 1.0
        grid.stride = -1
        grid.shape = (1, len(cells))
        grid.enabled = True
    else:
        grid.enabled = False
        for layer in cells:
            layer.visible = layer != pair.lr or pair.hr is None
        pair.sr.opacity = opacity
    for layer in cells:
        _layers.show_caption(layer)


def show_again(viewer: Any, hidden: list[Any]) -> None:
    """Show the layers in `hidden` that are still in the viewer, and empty it."""
    for layer in hidden:
        if layer in viewer.layers:
            layer.visible = True
    hidden.clear()


def hide_others(viewer: Any, pair: _layers.LayerPair, hidden: list[Any]) -> None:
    """Side by side shows the pair only: hide the other visible layers (into `hidden`)."""
    cells = members(viewer.layers, pair)
    for layer in viewer.layers:
        if layer.visible and layer not in cells:
            layer.visible = False
            hidden.append(layer)
