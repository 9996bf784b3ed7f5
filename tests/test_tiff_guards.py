"""Large TIFFs stay in bounded memory: huge single levels get a lazy display pyramid in
the napari reader, and pages whose tiles or strips are too big to decode, or fewer than
the header claims, are refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_srgan_sqe._napari.reader import read_slides
from napari_srgan_sqe.io import _tiff_reader
from napari_srgan_sqe.io.slides import SlideError, open_slide

TILE = 256
BIG = 20000  # 20000 x 20000 x 3 = 1.2 GB decoded, about 1 MB on disk


def _write_tiled(path: Path, size: int) -> Path:
    """A tiled zlib RGB TIFF whose tile (ty, tx) is the constant (ty + tx) % 256,
    written tile by tile from a generator (the image is never allocated)."""
    tiles = [np.full((TILE, TILE, 3), v, np.uint8) for v in range(256)]
    n = -(-size // TILE)

    def gen():
        for ty in range(n):
            for tx in range(n):
                yield tiles[(ty + tx) % 256]

    tifffile.imwrite(
        path,
        gen(),
        shape=(size, size, 3),
        dtype=np.uint8,
        tile=(TILE, TILE),
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 1},
    )
    return path


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tiled(tmp_path_factory.mktemp("big") / "big.tif", BIG)


def test_huge_single_level_tiff_opens_as_lazy_multiscale_layer(big_tiff: Path) -> None:
    slide = open_slide(big_tiff)
    assert len(slide.levels) == 1  # Slide.levels: the file's own levels

    [(data, meta, kind)] = read_slides(str(big_tiff))
    assert kind == "image" and meta["multiscale"] and isinstance(data, list)
    assert data[0].shape == (BIG, BIG, 3)
    assert all(isinstance(level, da.Array) and level.dtype == np.uint8 for level in data)
    shapes = [level.shape[:2] for level in data]
    assert shapes == [(BIG // 2**i, BIG // 2**i) for i in range(len(data))]
    assert max(shapes[-1]) <= 512 < max(shapes[-2])
    assert meta["metadata"]["file_levels"] == 1
    assert meta["metadata"]["downsamples"] == pytest.approx(
        [2.0**i for i in range(len(data))], rel=0.01
    )
    for level in data:  # no chunk is bigger than a display chunk
        assert max(level.chunksize[:2]) <= 512

    # the coarsest level is the block mean of level 0: tile (ty, tx) -> (ty + tx) % 256
    small = data[-1]
    factor = BIG // small.shape[0]
    per_tile = TILE // factor
    part = np.asarray(small[: 8 * per_tile : per_tile, : 8 * per_tile : per_tile])
    ty, tx = np.mgrid[:8, :8]
    np.testing.assert_array_equal(part[..., 0], (ty + tx) % 256)
    np.testing.assert_array_equal(part[..., 0], part[..., 2])


def test_coarsest_display_level_is_computed_in_bounded_memory(big_tiff: Path) -> None:
    """Computing the whole coarsest level reads all of level 0, chunk by chunk: the
    peak memory grows by far less than level 0's 1.2 GB (measured in a fresh process)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure peak memory")
    level = -1
    script = textwrap.dedent(
        f"""
        import numpy as np
        from napari_srgan_sqe._napari.reader import read_slides

        def kib(field):
            with open("/proc/self/status") as f:
                return next(int(x.split()[1]) for x in f if x.startswith(field + ":"))

        [(data, meta, kind)] = read_slides({str(big_tiff)!r})
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
        before = kib("VmRSS")
        small = data[{level}].compute(scheduler="threads", num_workers=2)
        assert small.shape[0] <= 512, small.shape
        print((kib("VmHWM") - before) * 1024, small.shape[0])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    grown, _ = (int(v) for v in out.stdout.split())
    level0 = BIG * BIG * 3
    assert grown < 256 * 2**20 < level0 / 4, f"peak memory grew by {grown / 2**20:.0f} MiB"


def test_small_single_level_tiff_stays_single_level(tmp_path: Path) -> None:
    path = _write_tiled(tmp_path / "small.tif", 1024)
    [(data, meta, _)] = read_slides(str(path))
    assert not meta["multiscale"] and data.shape == (1024, 1024, 3)
    assert meta["metadata"]["downsamples"] == [1.0]


# --- strips ----------------------------------------------------------------------


def _write_stripped(path: Path, size: int, rowsperstrip: int) -> Path:
    """A zlib RGB TIFF of constant data in strips of `rowsperstrip` rows."""
    tifffile.imwrite(
        path,
        np.full((size, size, 3), 200, np.uint8),
        photometric="rgb",
        compression="zlib",
        rowsperstrip=rowsperstrip,
    )
    return path


def test_single_strip_tiff_over_the_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = _write_stripped(tmp_path / "strip.tif", 1024, rowsperstrip=1024)  # 3 MiB strip
    assert path.stat().st_size < 100_000
    monkeypatch.setattr(_tiff_reader, "MAX_SEGMENT_BYTES", 2**20)
    with pytest.raises(SlideError) as err:
        open_slide(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "single strip" in message and "3 MiB" in message
    assert "tiled pyramidal TIFF" in message and "vips tiffsave" in message
    with pytest.raises(SlideError, match="single strip"):
        read_slides(str(path))  # the napari reader function


def test_small_strips_and_tiles_still_open(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_tiff_reader, "MAX_SEGMENT_BYTES", 2**20)
    stripped = _write_stripped(tmp_path / "strips.tif", 1024, rowsperstrip=64)  # 192 KiB
    slide = open_slide(stripped)
    np.testing.assert_array_equal(np.asarray(slide.levels[0][500:564, 10:74]), 200)
    tiled = _write_tiled(tmp_path / "tiled.tif", 1024)
    assert open_slide(tiled).shape == (1024, 1024, 3)


def test_default_limit_refuses_the_reported_30000_px_single_strip() -> None:
    """The reported file: 30000 x 30000 RGB in one zlib strip (2.6 MB on disk, 2.5 GiB
    to decode); 1000 rows per strip of the same image pass."""

    def page(rows: int) -> SimpleNamespace:
        return SimpleNamespace(
            is_tiled=False,
            rowsperstrip=rows,
            imagelength=30000,
            imagewidth=30000,
            samplesperpixel=3,
            planarconfig=1,
            dtype=np.uint8,
        )

    problem = _tiff_reader.segment_problem(page(30000))
    assert problem and "single strip" in problem and "2,575 MiB" in problem
    assert _tiff_reader.segment_problem(page(1000)) is None


# -- tiles: decode budget and the tiles a header claims ------------------------------------
@pytest.fixture(scope="module")
def tile_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiffcraft import tile_bomb

    return tile_bomb(tmp_path_factory.mktemp("bomb") / "tilebomb.tif", 16384)


def test_a_tile_bomb_is_refused_before_anything_is_decoded(tile_bomb: Path, tmp_path, capsys):
    """The reported file: one 16384 x 16384 zlib tile, 0.8 MB on disk, 768 MiB decoded
    (it took 1.9 GB to read a 64 px region). Refused at open, and the export command
    says why and writes nothing."""
    from napari_srgan_sqe.cli import main

    assert tile_bomb.stat().st_size < 1_000_000
    with pytest.raises(SlideError) as err:
        open_slide(tile_bomb)
    message = str(err.value)
    assert "tiles of 16384 x 16384 px" in message and "768 MiB" in message
    assert "256 MiB" in message and "vips tiffsave" in message
    out = tmp_path / "o.ome.zarr"
    code = main(["enhance", str(tile_bomb), str(out), "--region", "0,0,64,64", "--mpp", "0.25"])
    err_text = capsys.readouterr().err
    assert code != 0 and "tiles of 16384 x 16384 px" in err_text
    assert "Traceback" not in err_text and not out.exists()


def test_tiles_within_the_budget_open_and_read(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_tiff_reader, "MAX_SEGMENT_BYTES", 256 * 256 * 3)
    tiled = _write_tiled(tmp_path / "tiled.tif", 1024)  # 256 px tiles: exactly the budget
    np.testing.assert_array_equal(np.asarray(open_slide(tiled).levels[0][300:301, 0:1]), 1)
    monkeypatch.setattr(_tiff_reader, "MAX_SEGMENT_BYTES", 256 * 256 * 3 - 1)
    with pytest.raises(SlideError, match="tiles of 256 x 256 px"):
        open_slide(tiled)


def test_a_header_claiming_more_pixels_than_its_tiles_is_refused(tmp_path: Path) -> None:
    """The reported file: a 256 px tiled TIFF whose width and height were patched to
    10^6. It used to export black (the 15 million missing tiles read as zeros)."""
    from tiffcraft import IMAGE_LENGTH, IMAGE_WIDTH, set_tag, small_tiled

    path = small_tiled(tmp_path / "h.tif")
    set_tag(path, IMAGE_WIDTH, 10**6)
    set_tag(path, IMAGE_LENGTH, 10**6)
    with pytest.raises(SlideError) as err:
        open_slide(path)
    message = str(err.value)
    assert "1000000 x 1000000 px" in message and "15,264,649 tiles" in message
    assert "lists only 1" in message
    # one tile too few (a 257 px wide image of 256 px tiles needs two per row)
    path = small_tiled(tmp_path / "w.tif")
    set_tag(path, IMAGE_WIDTH, 257)
    with pytest.raises(SlideError, match="needs 2 tiles"):
        open_slide(path)


def test_a_header_claiming_fewer_pixels_reads_what_it_claims(tmp_path: Path) -> None:
    """Fewer pixels than the tiles hold is a valid TIFF (edge tiles are padded)."""
    from tiffcraft import IMAGE_WIDTH, set_tag, small_tiled

    path = small_tiled(tmp_path / "n.tif", seed=3)
    want = tifffile.imread(path)[:, :200]
    set_tag(path, IMAGE_WIDTH, 200)
    slide = open_slide(path)
    assert slide.shape == (256, 200, 3)
    np.testing.assert_array_equal(np.asarray(slide.levels[0]), want)
