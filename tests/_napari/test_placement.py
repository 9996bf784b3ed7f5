"""Exports of a region opened beside their source in a real napari viewer: placed where
they came from (NGFF translation, OME-TIFF plane position), the pixels agreeing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_srgan_sqe.inference.export import enhance_slide
from tiny_runs import tiny

from .conftest import PLUGIN, SAMPLE

REGION = (757, 1963, 120, 88)  # x, y, w, h in LR px of the sample: odd offsets, tissue
BLOCK = 8  # LR px: blocks whose mean colour LR and SR must share


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    model = tiny(0)  # random weights after a bicubic skip: close to bicubic
    folder = tmp_path_factory.mktemp("placed")
    return {
        ext: enhance_slide(
            SAMPLE, folder / f"sr{ext}", model=model, device="cpu", region=REGION, tile=64
        )
        for ext in (".ome.zarr", ".ome.tif")
    }


def _block_means(layer, corners: np.ndarray, size: float) -> np.ndarray:  # noqa: ANN001
    """Mean colour of `layer`'s level 0 over the world squares of edge `size` whose
    top-left corners are `corners` (world (y, x))."""
    level0 = layer.data[0] if layer.multiscale else layer.data
    out = []
    for corner in corners:
        lo = np.rint(np.asarray(layer.world_to_data(corner))[-2:] + 0.5).astype(int)
        hi = np.rint(np.asarray(layer.world_to_data(corner + size))[-2:] + 0.5).astype(int)
        assert (lo >= 0).all() and (hi <= level0.shape[:2]).all()
        out.append(np.asarray(level0[lo[0] : hi[0], lo[1] : hi[1]]).reshape(-1, 3).mean(0))
    return np.array(out)


@pytest.mark.parametrize("ext", [".ome.zarr", ".ome.tif"])
def test_export_overlays_its_source(ext: str, make_napari_viewer, exports) -> None:
    from napari_srgan_sqe._napari._layers import sr_transform

    viewer = make_napari_viewer()
    [src] = viewer.open(SAMPLE, plugin=PLUGIN)
    [sr] = viewer.open(exports[ext], plugin=PLUGIN)
    x, y, w, h = REGION
    s = 4
    # where the viewer would put the SR of the source, moved to the region
    want = sr_transform(src, s)
    assert tuple(sr.scale) == pytest.approx(want["scale"])
    assert tuple(sr.translate) == pytest.approx(
        np.add(want["translate"], np.multiply((y, x), src.scale))
    )
    # the export's first pixel's corner is the corner of source pixel (y, x), its last
    # pixel's far corner that of source pixel (y + h - 1, x + w - 1); SR pixels 0 - 3
    # make up LR pixel y, so their middle (1.5) is that pixel's centre
    for sr_px, lr_px in [
        ((-0.5, -0.5), (y - 0.5, x - 0.5)),
        ((s * h - 0.5, s * w - 0.5), (y + h - 0.5, x + w - 0.5)),
        ((1.5, 1.5), (y, x)),
    ]:
        np.testing.assert_allclose(sr.data_to_world(sr_px), src.data_to_world(lr_px), atol=1e-9)

    # the pixels at the same world place agree: mean colours of 8 x 8 LR px blocks
    mpp = float(src.scale[-1])
    blocks = [
        np.asarray(src.data_to_world((y + i - 0.5, x + j - 0.5)))
        for i in range(0, h - BLOCK + 1, BLOCK)
        for j in range(0, w - BLOCK + 1, BLOCK)
    ]
    corners = np.array(blocks)
    lr = _block_means(src, corners, BLOCK * mpp)
    got = _block_means(sr, corners, BLOCK * mpp)
    err = np.abs(got - lr).mean()
    assert err < 6, err
    # the same blocks of the export left at the origin (as before: no translation) land
    # on other tissue: what the check above tells apart
    unplaced = corners - np.multiply((y, x), mpp)
    wrong = np.abs(
        _block_means(sr, corners, BLOCK * mpp) - _block_means(src, unplaced, BLOCK * mpp)
    )
    assert wrong.mean() > 3 * err, (wrong.mean(), err)
