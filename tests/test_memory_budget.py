"""Every reader stays within a stated memory budget on malformed and huge inputs.

Each input is opened, and a 64 px region of it read, in a fresh Python process whose
peak resident memory (VmHWM) is then compared with the budget: `BUDGET` for
anything read in tiles or strips, plus three times the decoded RGB size for a plain
PNG (decoded whole by design, up to Pillow's decompression-bomb limit, through
Pillow's own buffers and a conversion to RGB). The inputs are the
reported ones: a tile bomb (read by tifffile, and named .svs by OpenSlide), a strip
bomb, a zlib tile inflating past its tile, a JPEG tile whose frame header claims
65000 px, a header claiming 10^6 px, a truncated pyramid, an OME-Zarr with one
16384 px chunk, and, for scale, a valid 20000 x 20000 px tiled TIFF and a large PNG.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

import tiffcraft

BUDGET = 512 * 2**20
"""Peak resident memory of a process that opens any input and reads a 64 px region
(the interpreter, numpy, dask, zarr and tifffile themselves take about 80 MB; every
case here peaked at 81-97 MiB, the PNG at 758 MiB)."""

_PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from napari_srgan_sqe.io.slides import SlideError, open_slide

    outcome = "read"
    try:
        slide = open_slide(sys.argv[1])
        region = np.asarray(slide.levels[0][:64, :64])
        assert region.dtype == np.uint8 and region.shape[2] == 3
    except SlideError as exc:
        outcome = "refused: " + str(exc)
    # VmHWM: this program's own peak; ru_maxrss would also count the parent's memory
    # that the forked child held before exec (Linux carries it over)
    with open("/proc/self/status") as fh:
        hwm = next(line for line in fh if line.startswith("VmHWM:"))
    peak = int(hwm.split()[1]) * 1024
    print(json.dumps({"outcome": outcome, "peak": peak}))
    """
)


def _big_tiled(path: Path) -> Path:
    size, tile = 20000, 256
    block = np.full((tile, tile, 3), 180, np.uint8)
    n = -(-size // tile)
    tifffile.imwrite(path, (block for _ in range(n * n)), shape=(size, size, 3), dtype=np.uint8,
                     tile=(tile, tile), photometric="rgb", compression="zlib",
                     compressionargs={"level": 1})  # fmt: skip
    return path


def _huge_header(path: Path) -> Path:
    tiffcraft.small_tiled(path)
    tiffcraft.set_tag(path, tiffcraft.IMAGE_WIDTH, 10**6)
    tiffcraft.set_tag(path, tiffcraft.IMAGE_LENGTH, 10**6)
    return path


def _truncated_pyramid(path: Path) -> Path:
    img = np.random.default_rng(2).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(img, subifds=1, tile=(64, 64), photometric="rgb", compression="zlib")
        tw.write(img[::2, ::2], tile=(64, 64), photometric="rgb", compression="zlib",
                 subfiletype=1)  # fmt: skip
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _zarr_chunk_bomb(path: Path) -> Path:
    """An OME-Zarr whose one chunk is 3 x 16384 x 16384 zeros (100 KB stored, 768 MiB
    decoded), made by rewriting the array metadata of a small export."""
    import json

    import numcodecs

    from napari_srgan_sqe.io.pyramid import write_ome_zarr

    write_ome_zarr(np.full((64, 64, 3), 100, np.uint8), path, chunk=64)
    level = path / "0"
    meta = json.loads((level / ".zarray").read_text())
    n = 16384
    meta["shape"] = meta["chunks"] = [3, n, n]
    (level / ".zarray").write_text(json.dumps(meta))
    stream = numcodecs.get_codec(meta["compressor"]).encode(np.zeros((3, n, n), np.uint8))
    for old in level.iterdir():
        if old.is_dir():
            import shutil

            shutil.rmtree(old)
    (level / "0" / "0").mkdir(parents=True)
    (level / "0" / "0" / "0").write_bytes(stream)
    return path


def _svs_tile_bomb(path: Path) -> Path:
    """The tile bomb named .svs: read through OpenSlide (its generic TIFF driver)."""
    return tiffcraft.tile_bomb(path, 16384)


def _large_png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((8000, 8000), np.uint8)).save(path)  # 64 Mpx, grey
    return path


# name -> (make the file, whether it must be refused, decoded bytes outside BUDGET)
CASES = {
    "tile-bomb": (lambda p: tiffcraft.tile_bomb(p, 16384), True, 0),
    "strip-bomb": (lambda p: tiffcraft.strip_bomb(p, 12000), True, 0),
    "deflate-overrun": (lambda p: tiffcraft.deflate_overrun(p, 2**31), True, 0),
    "jpeg-frame-bomb": (tiffcraft.jpeg_frame_bomb, True, 0),
    "huge-header": (_huge_header, True, 0),
    "truncated-pyramid": (_truncated_pyramid, True, 0),
    "big-tiled": (_big_tiled, False, 0),
    "large-png": (_large_png, False, 3 * 8000 * 8000 * 3),
    "zarr-chunk-bomb": (_zarr_chunk_bomb, True, 0),
    "svs-tile-bomb": (_svs_tile_bomb, True, 0),
}
SUFFIX = {"large-png": ".png", "zarr-chunk-bomb": ".ome.zarr", "svs-tile-bomb": ".svs"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reading_any_input_stays_within_the_memory_budget(name, tmp_path) -> None:
    make, refused, decoded = CASES[name]
    path = make(tmp_path / f"{name}{SUFFIX.get(name, '.tif')}")
    stored = sum(f.stat().st_size for f in path.rglob("*")) if path.is_dir() else None
    assert (stored or path.stat().st_size) < 64 * 2**20  # small, however large they claim
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith("refused") is refused, result["outcome"]
    if refused:
        assert "\n" not in result["outcome"] and str(path) in result["outcome"]
    assert result["peak"] < BUDGET + decoded, f"{name}: {result['peak'] / 2**20:.0f} MiB"
