"""open_slide on real slides and images: shapes, pixel size, pixel values, laziness, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from napari_srgan_sqe.io.slides import SlideError, open_slide


def _count_read_region(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record every OpenSlide.read_region call (the real one still runs)."""
    calls: list[tuple] = []
    real = openslide.OpenSlide.read_region

    def counting(self, location, level, size):
        calls.append((location, level, size))
        return real(self, location, level, size)

    monkeypatch.setattr(openslide.OpenSlide, "read_region", counting)
    return calls


def _reference(
    path: Path, location: tuple[int, int], level: int, size: tuple[int, int]
) -> np.ndarray:
    """OpenSlide's own pixels for a region (x, y), (w, h); asserts it is fully opaque."""
    rgba = np.asarray(openslide.OpenSlide(path).read_region(location, level, size))
    assert (rgba[..., 3] == 255).all()
    return rgba[..., :3]


# ---------------------------------------------------------------- vendor slides (OpenSlide)
def test_cmu_svs_levels_and_pixel_size(cmu_svs: Path) -> None:
    slide = open_slide(cmu_svs)
    assert slide.format == "aperio"
    assert len(slide.levels) == 1
    assert slide.levels[0].shape == (2967, 2220, 3)
    assert slide.levels[0].dtype == np.uint8
    assert slide.mpp == pytest.approx(0.499)
    assert slide.downsamples == [1.0]
    assert slide.path == cmu_svs
    assert slide.levels[0].chunksize[:2] == (480, 480)  # 2 x the file's 240 px tiles
    assert (slide.codec, slide.quality) == ("jpeg", 30)  # Aperio "JPEG/RGB Q=30"


def test_cmu_svs_pixels_equal_openslide(cmu_svs: Path) -> None:
    level = open_slide(cmu_svs).levels[0]
    # inside one tile; across tile borders (240) and chunk borders (480); the bottom-right edge
    for y, x, h, w in [(10, 20, 50, 60), (200, 450, 320, 300), (2900, 2150, 67, 70)]:
        got = level[y : y + h, x : x + w].compute()
        np.testing.assert_array_equal(got, _reference(cmu_svs, (x, y), 0, (w, h)))


def test_cmu_svs_whole_level_in_threads(cmu_svs: Path) -> None:
    """All chunks read concurrently through one shared handle equal one big read."""
    import dask

    with dask.config.set(scheduler="threads", num_workers=4):
        got = open_slide(cmu_svs).levels[0][:1500].compute()  # 4 x 5 chunks, the last partial
    np.testing.assert_array_equal(got, _reference(cmu_svs, (0, 0), 0, (2220, 1500)))


def test_aperio_j2k_svs_pyramid(aperio_j2k_svs: Path, cmu_svs: Path) -> None:
    slide = open_slide(aperio_j2k_svs)
    assert [lvl.shape for lvl in slide.levels] == [(1203, 2219, 3), (601, 1109, 3)]
    assert all(lvl.dtype == np.uint8 for lvl in slide.levels)
    assert slide.mpp is None
    assert (slide.codec, slide.quality) == ("jpeg2000", 70)  # Aperio "J2K/KDU Q=70"
    assert slide.downsamples[0] == 1.0 and slide.downsamples[1] == pytest.approx(2.0013, abs=1e-4)
    lvl0, lvl1 = slide.levels
    # level 0 across the 256 px tiles and 512 px chunks (JPEG 2000 tiles)
    np.testing.assert_array_equal(
        lvl0[1000:1100, 480:560].compute(), _reference(aperio_j2k_svs, (480, 1000), 0, (80, 100))
    )
    # level 1: a region inside one chunk, addressed as OpenSlide expects (level-0 coords)
    ds = slide.downsamples[1]
    got = lvl1[512:600, 1024:1100].compute()
    ref = _reference(aperio_j2k_svs, (round(1024 * ds), round(512 * ds)), 1, (76, 88))
    np.testing.assert_array_equal(got, ref)
    # the tiles hold the bundled sample's tissue (transposed; JPEG 2000 is lossy)
    sample = open_slide(cmu_svs).levels[0][655:735, 1100:1200].compute().transpose(1, 0, 2)
    assert np.abs(lvl0[1000:1100, 480:560].compute().astype(int) - sample).mean() < 8


def test_openslide_reads_nothing_at_open(cmu_svs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_read_region(monkeypatch)
    slide = open_slide(cmu_svs)
    assert calls == []
    slide.levels[0][500:510, 500:510].compute()
    assert calls == [((480, 480), 0, (480, 480))]  # exactly the one chunk under the region


def test_levels_pickle_and_read_in_another_process(cmu_svs: Path) -> None:
    """Graphs pickle by path (no open handle inside), as dask.distributed needs."""
    level = open_slide(cmu_svs).levels[0][100:200, 300:400]
    again = pickle.loads(pickle.dumps(level))
    np.testing.assert_array_equal(again.compute(), level.compute())


# ---------------------------------------------------------------- bad inputs
@pytest.fixture
def truncated_svs(cmu_svs: Path, tmp_path: Path) -> Path:
    path = tmp_path / "truncated.svs"
    path.write_bytes(cmu_svs.read_bytes()[:100_000])
    return path


def _bad(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    if kind == "truncated svs":
        return request.getfixturevalue("truncated_svs")
    if kind == "text named .tif":
        path = tmp_path / "notes.tif"
        path.write_text("this is not an image\n" * 20)
        return path
    if kind == "text named .svs":
        path = tmp_path / "notes.svs"
        path.write_text("this is not a slide\n" * 20)
        return path
    if kind == "empty file":
        path = tmp_path / "empty.png"
        path.touch()
        return path
    if kind == "nonexistent":
        return tmp_path / "missing.svs"
    if kind == "unsupported":
        path = tmp_path / "table.csv"
        path.write_text("a,b\n1,2\n")
        return path
    if kind == "folder":
        return tmp_path
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated svs", "truncated"),
        ("text named .tif", "not a valid TIFF"),
        ("text named .svs", "OpenSlide does not recognise"),
        ("empty file", "empty"),
        ("nonexistent", "no such file"),
        ("unsupported", "unsupported file type '.csv'"),
        ("folder", "not an OME-Zarr"),
    ],
)
def test_bad_inputs_give_clear_errors(
    kind: str, reason: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = _bad(kind, tmp_path, request)
    with pytest.raises(SlideError) as info:
        open_slide(path)
    message = str(info.value)
    assert str(path) in message and reason in message
    assert info.value.__class__ is SlideError
    again = pickle.loads(pickle.dumps(info.value))  # errors cross process borders intact
    assert str(again) == message


@pytest.mark.parametrize(("keep", "whole"), [(1_500_000, "0 to 1"), (1_900_000, "0 to 2")])
def test_svs_cut_after_its_first_levels_names_the_directory_cut_off(
    cmu_svs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd, keep: int, whole: str
) -> None:
    """A copy interrupted past the first directories (the usual case): one clear line,
    and tifffile's own log of the unreachable directory is not printed."""
    path = tmp_path / "cut.svs"
    path.write_bytes(cmu_svs.read_bytes()[:keep])
    with caplog.at_level("DEBUG"), pytest.raises(SlideError) as info:
        open_slide(path)
    message = str(info.value)
    assert f"the file is truncated: directory {int(whole[-1]) + 1} " in message
    assert f"but the file has only {keep} bytes; directories {whole} are whole" in message
    assert "invalid page offset" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_tiff_with_missing_tile_data_is_truncated(he_crop: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, he_crop, tile=(256, 256), photometric="rgb")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="truncated"):
        open_slide(path)


# ---------------------------------------------------------------- conversions
def test_uint16_tiff_scaled_to_uint8(tmp_path: Path) -> None:
    values = np.array([0, 128, 129, 257, 1000, 32896, 65534, 65535], np.uint16)
    rgb16 = np.stack([values, values[::-1], values], axis=-1)[None]  # (1, 8, 3)
    path = tmp_path / "sixteen.tif"
    tifffile.imwrite(path, rgb16, photometric="rgb")
    got = open_slide(path).levels[0].compute()
    expected = np.floor(rgb16 / 257 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got[0, :, 0].tolist() == [0, 0, 1, 1, 4, 128, 255, 255]


def test_uint16_grayscale_tiff(tmp_path: Path) -> None:
    gray = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    path = tmp_path / "gray16.tif"
    tifffile.imwrite(path, gray, photometric="minisblack")
    got = open_slide(path).levels[0].compute()
    assert got.shape == (8, 8, 3)
    np.testing.assert_array_equal(got[..., 0], np.floor(gray / 257 + 0.5).astype(np.uint8))
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


def test_grayscale_png_replicated(he_crop: np.ndarray, tmp_path: Path) -> None:
    gray = he_crop[:200, :300, 1].copy()
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    got = open_slide(path).levels[0].compute()
    assert got.shape == (200, 300, 3) and got.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], gray)


def test_jpeg_is_one_lazy_chunk(he_crop: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "he.jpg"
    Image.fromarray(he_crop[:300, :400]).save(path, quality=95)
    slide = open_slide(path)
    assert slide.format == "jpeg" and slide.mpp is None
    assert slide.levels[0].shape == (300, 400, 3) and slide.levels[0].numblocks == (1, 1, 1)
    got = slide.levels[0].compute().astype(int)
    with Image.open(path) as im:  # decoded as Pillow decodes it
        np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))
    # lossy, but the same image: Pillow's default 4:2:0 chroma subsampling costs 6.8 per
    # value on this 20x H&E, rich in colour detail at the pixel scale (3.0 with 4:4:4); a
    # 1 px shift costs 24, swapping R and B 17
    assert np.abs(got - he_crop[:300, :400]).mean() < 10


def test_rgba_png_composited_on_white(he_crop: np.ndarray, tmp_path: Path) -> None:
    rgb = he_crop[:64, :64]
    alpha = np.zeros((64, 64, 1), np.uint8)
    alpha[:32] = 255  # top opaque, bottom: transparent left, half-transparent right
    alpha[32:, 32:] = 128
    path = tmp_path / "rgba.png"
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), mode="RGBA").save(path)
    got = open_slide(path).levels[0].compute()
    assert got.shape == (64, 64, 3)
    np.testing.assert_array_equal(got[:32], rgb[:32])
    assert (got[32:, :32] == 255).all()
    half = (rgb[32:, 32:].astype(np.uint32) * 128 + 255 * 127 + 127) // 255
    np.testing.assert_array_equal(got[32:, 32:], half.astype(np.uint8))


def test_float_tiff_in_unit_range(tmp_path: Path) -> None:
    img = np.linspace(0, 1, 48, dtype=np.float32).reshape(4, 4, 3)
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, img, photometric="rgb")
    np.testing.assert_array_equal(
        open_slide(path).levels[0].compute(), np.rint(img * 255).astype(np.uint8)
    )


def test_float_tiff_out_of_range_refused_when_read(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.full((4, 4, 3), 7.5, np.float32), photometric="rgb")
    level = open_slide(path).levels[0]  # opening reads nothing, so it succeeds
    with pytest.raises(SlideError, match=r"must lie in \[0, 1\]"):
        level.compute()


@pytest.mark.parametrize(
    ("shape", "axes", "reason"),
    [
        ((16, 16, 2), "YXS", "2 channels"),
        ((5, 16, 16), "ZYX", "5 planes"),
        ((16, 16, 6), "YXS", "6 channels"),
    ],
)
def test_unsupported_layouts_refused(
    shape: tuple[int, ...], axes: str, reason: str, tmp_path: Path
) -> None:
    path = tmp_path / "odd.tif"
    tifffile.imwrite(
        path, np.zeros(shape, np.uint8), photometric="minisblack", metadata={"axes": axes}
    )
    with pytest.raises(SlideError, match=reason):
        open_slide(path)


def test_int32_refused(tmp_path: Path) -> None:
    path = tmp_path / "int.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.int32))
    with pytest.raises(SlideError, match="pixel type int32"):
        open_slide(path)


# ---------------------------------------------------------------- TIFF pixel size, OME-Zarr layouts
@pytest.mark.parametrize(
    ("resolution", "unit", "mpp"),
    [
        ((20000.0, 20000.0), "CENTIMETER", 0.5),
        ((50800.0, 50800.0), "INCH", 0.5),
        ((72.0, 72.0), "INCH", None),
    ],
)
def test_tiff_resolution_tags(resolution, unit, mpp, tmp_path: Path) -> None:
    path = tmp_path / "res.tif"
    tifffile.imwrite(
        path, np.zeros((8, 8, 3), np.uint8), resolution=resolution, resolutionunit=unit
    )
    got = open_slide(path).mpp
    assert got == (pytest.approx(mpp) if mpp else None)  # 72 dpi is a screen default: ignored


def _ngff(
    path: Path, data: np.ndarray, axes: str, *, scale_x: float, unit: str, zarr_format: int
) -> None:
    import zarr

    group = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    group.create_array("0", data=data, chunks=data.shape)
    types = {"c": "channel", "t": "time"}
    axes_meta = [
        {"name": a, "type": types.get(a, "space"), **({"unit": unit} if a in "xy" else {})}
        for a in axes
    ]
    scale = [scale_x if a in "xy" else 1.0 for a in axes]
    ms = {
        "version": "0.4" if zarr_format == 2 else "0.5",
        "axes": axes_meta,
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        ],
    }
    group.attrs.update(
        {"multiscales": [ms]}
        if zarr_format == 2
        else {"ome": {"version": "0.5", "multiscales": [ms]}}
    )


@pytest.mark.parametrize(
    ("axes", "zarr_format", "unit", "mpp"),
    [
        ("cyx", 2, "micrometer", 0.25),
        ("yxc", 2, "nanometer", 0.25),
        ("tczyx", 3, "micrometer", 0.25),
        ("yx", 3, "pixel", None),
    ],
)
def test_ome_zarr_axis_orders(
    axes, zarr_format, unit, mpp, he_crop: np.ndarray, tmp_path: Path
) -> None:
    rgb = he_crop[:100, :120]
    data = {
        "cyx": rgb.transpose(2, 0, 1),
        "yxc": rgb,
        "tczyx": rgb.transpose(2, 0, 1)[None, :, None],
        "yx": rgb[..., 0],
    }[axes]
    scale_x = 250.0 if unit == "nanometer" else 0.25
    path = tmp_path / "img.ome.zarr"
    _ngff(path, data, axes, scale_x=scale_x, unit=unit, zarr_format=zarr_format)
    slide = open_slide(path)
    expected = np.repeat(rgb[..., :1], 3, axis=2) if axes == "yx" else rgb
    np.testing.assert_array_equal(slide.levels[0].compute(), expected)
    assert slide.format == "ome-zarr"
    assert slide.mpp == (pytest.approx(mpp) if mpp else None)


def test_repr_is_one_short_line(cmu_svs: Path) -> None:
    slide = open_slide(cmu_svs)
    assert repr(slide) == (
        "Slide('CMU-1-Small-Region.svs', aperio, 2220 x 2967 px, 1 level(s), 0.499 um/px, "
        "JPEG Q=30 (quantisation tables))"
    )
    assert len(slide.metadata["properties"]) > 20  # the vendor metadata are still there


@pytest.mark.parametrize("kind", ["tiff", "svs", "png", "zarr"])
def test_closing_a_slide_releases_its_file_and_a_later_read_reopens_it(
    kind: str, he_crop: np.ndarray, cmu_svs: Path, tmp_path: Path
) -> None:
    import psutil

    if kind == "tiff":
        path = tmp_path / "tiled.tif"
        tifffile.imwrite(path, he_crop, tile=(64, 64), photometric="rgb")
    elif kind == "svs":  # OpenSlide's handle; a copy, so that no other test's open slide shares it
        path = tmp_path / cmu_svs.name
        path.write_bytes(cmu_svs.read_bytes())
    elif kind == "png":  # its "handle" is the decoded image, which has nothing to close
        path = tmp_path / "crop.png"
        Image.fromarray(he_crop).save(path)
    else:
        from napari_srgan_sqe.io.pyramid import write_ome_zarr

        path = write_ome_zarr(he_crop, tmp_path / "crop.ome.zarr", chunk=64)

    def held() -> bool:
        """The file is open in this process: tifffile keeps it open (psutil sees it),
        OpenSlide holds a library handle of its own (in the shared registry)."""
        from napari_srgan_sqe.io import _slide

        if any(Path(k[1]) == path for k in _slide._HANDLES):
            return True
        return any(Path(f.path) == path.resolve() for f in psutil.Process().open_files())

    with open_slide(path) as slide:
        first = np.asarray(slide.levels[0][:64, :80])
        assert np.array_equal(np.asarray(slide.levels[0][:64, :80]), first)  # read twice
        assert held()
    assert not held()
    again = np.asarray(slide.levels[0][:64, :80])  # reopened on demand
    assert np.array_equal(first, again) and held()
    slide.close()
    assert not held()
