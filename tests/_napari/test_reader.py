"""npe2 reader, sample and writer hooks in a real napari viewer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_srgan_sqe._napari.reader import get_reader
from napari_srgan_sqe.io.slides import SlideError, open_slide

PLUGIN = "napari-srgan-sqe"


def test_get_reader_declines_other_paths(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert get_reader(str(notes)) is None
    assert get_reader(str(tmp_path)) is None  # a folder without zarr metadata
    assert get_reader([str(notes), str(tmp_path / "a.svs")]) is None
    assert callable(get_reader(str(tmp_path / "a.svs")))
    assert callable(get_reader([str(tmp_path / "a.ome.tif")]))


def test_aperio_j2k_opens_as_multiscale_layer(make_napari_viewer, aperio_j2k_svs: Path) -> None:
    viewer = make_napari_viewer()
    [layer] = viewer.open(aperio_j2k_svs, plugin=PLUGIN)
    assert layer.multiscale and layer.rgb
    assert [level.shape for level in layer.data] == [(1203, 2219, 3), (601, 1109, 3)]
    assert tuple(layer.scale) == (1.0, 1.0)  # no pixel size recorded
    assert layer.metadata["slide_format"] == "aperio" and layer.metadata["mpp"] is None
    assert layer.name == "aperio-j2k"


def test_cmu_opens_with_pixel_size(make_napari_viewer, cmu_svs: Path) -> None:
    viewer = make_napari_viewer()
    [layer] = viewer.open(cmu_svs, plugin=PLUGIN)
    assert not layer.multiscale  # a single level
    assert layer.data.shape == (2967, 2220, 3)
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert str(layer.units[-1]) == "micrometer"
    assert layer.metadata["mpp"] == pytest.approx(0.499)


def test_written_pyramids_open_with_scale(make_napari_viewer, he_crop, tmp_path: Path) -> None:
    from napari_srgan_sqe.io.pyramid import write_ome_tiff, write_ome_zarr

    viewer = make_napari_viewer()
    zarr_path = write_ome_zarr(he_crop, tmp_path / "he.ome.zarr", mpp=0.25, chunk=256)
    tiff_path = write_ome_tiff(he_crop, tmp_path / "he.ome.tif", mpp=0.25, tile=256)
    for path in (zarr_path, tiff_path):
        [layer] = viewer.open(path, plugin=PLUGIN)
        assert layer.multiscale and len(layer.data) == 3
        assert tuple(layer.scale) == pytest.approx((0.25, 0.25))
        np.testing.assert_array_equal(
            np.asarray(layer.data[0][100:140, 200:260]), he_crop[100:140, 200:260]
        )


def test_broken_file_is_reported_not_crashing(make_napari_viewer, tmp_path: Path) -> None:
    """The reader accepts the extension and raises SlideError: napari shows its message.

    (File > Open with several readers for *.svs asks which to use, then lets the
    chosen reader's exception reach its notification handler.)
    """
    broken = tmp_path / "broken.svs"
    broken.write_text("not a slide\n" * 10)
    reader = get_reader(str(broken))
    with pytest.raises(SlideError, match="OpenSlide does not recognise"):
        reader(str(broken))
    viewer = make_napari_viewer()
    with pytest.raises(SlideError, match=str(broken)):
        viewer.open(broken, plugin=PLUGIN)
    assert len(viewer.layers) == 0


def test_sample_data_loads(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cmu_small_region")
    [layer] = viewer.layers
    assert layer.name == "CMU-1-Small-Region" and layer.rgb
    assert layer.data.shape == (2967, 2220, 3)
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))


@pytest.mark.parametrize("ext", [".ome.zarr", ".ome.tif"])
def test_writer_hooks_round_trip(ext: str, make_napari_viewer, he_crop, tmp_path: Path) -> None:
    import napari

    viewer = make_napari_viewer()
    layer = viewer.add_image(
        he_crop[:600, :500], rgb=True, scale=(0.25, 0.25), translate=(10.5, -3.0), name="he"
    )
    path = tmp_path / f"saved{ext}"
    written = napari.save_layers(str(path), [layer], plugin=PLUGIN)
    assert written == [str(path)]
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(0.25)
    assert slide.origin == pytest.approx((10.5, -3.0))  # the layer's place is kept
    assert len(slide.levels) == 2  # 600 px -> 300 px fits one 512 px chunk
    np.testing.assert_array_equal(slide.levels[0].compute(), he_crop[:600, :500])
    [reopened] = viewer.open(path, plugin=PLUGIN)
    assert tuple(reopened.translate) == pytest.approx((10.5, -3.0))


def test_writer_converts_grayscale_multiscale(he_crop, tmp_path: Path) -> None:
    from napari_srgan_sqe._napari.writer import write_ome_zarr

    gray = [he_crop[..., 1], he_crop[::2, ::2, 1]]
    meta = {"name": "gray", "multiscale": True, "scale": (1.0, 1.0), "metadata": {}}
    [out] = write_ome_zarr(str(tmp_path / "g.ome.zarr"), gray, meta)
    slide = open_slide(out)
    assert slide.mpp is None and len(slide.levels) == 2
    np.testing.assert_array_equal(slide.levels[1].compute()[..., 2], he_crop[::2, ::2, 1])


def test_npe2_validate() -> None:
    npe2 = Path(sys.executable).with_name("npe2")
    command = [str(npe2)] if npe2.exists() else [sys.executable, "-m", "npe2"]
    run = subprocess.run(
        [*command, "validate", PLUGIN], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_writer_resumes_and_reports_progress(he_crop, tmp_path: Path, monkeypatch) -> None:
    import napari.utils

    from napari_srgan_sqe._napari import writer
    from napari_srgan_sqe.io import pyramid

    bars: list[list[int]] = []

    class Bar:
        def __init__(self, total: int, desc: str) -> None:
            self.n, self.total = 0, total
            bars.append([])

        def update(self, k: int) -> None:
            self.n += k
            bars[-1].append(self.n)

        def close(self) -> None:
            bars[-1].append(-1)

    monkeypatch.setattr(napari.utils, "progress", Bar)
    meta = {"name": "he", "scale": (1.0, 1.0), "metadata": {}}
    data = he_crop[:1024, :1024]
    path = tmp_path / "r.ome.zarr"
    real = pyramid.write_ome_zarr

    def interrupted(*args, progress, **kwargs):  # noqa: ANN001, ANN002, ANN202
        def stop(done: int, total: int) -> None:
            progress(done, total)
            if done >= 2:
                raise KeyboardInterrupt

        return real(*args, progress=stop, **kwargs)

    monkeypatch.setattr(pyramid, "write_ome_zarr", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.write_ome_zarr(str(path), data, meta)
    assert bars[-1][-1] == -1  # the bar is closed whatever happens
    monkeypatch.setattr(pyramid, "write_ome_zarr", real)
    writer.write_ome_zarr(str(path), data, meta)
    assert bars[-1][0] == 2 and bars[-1][-2] == 5  # resumed at unit 2 of 4 + 1
    np.testing.assert_array_equal(open_slide(path).levels[0].compute(), data)
    # other pixels at the same path: not resumed from the interrupted save
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(pyramid, "write_ome_zarr", interrupted)
        writer.write_ome_zarr(str(tmp_path / "s.ome.zarr"), 255 - data, meta)
    monkeypatch.setattr(pyramid, "write_ome_zarr", real)
    writer.write_ome_zarr(str(tmp_path / "s.ome.zarr"), data, meta)
    np.testing.assert_array_equal(open_slide(tmp_path / "s.ome.zarr").levels[0].compute(), data)
