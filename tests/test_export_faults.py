"""Export faults: two exports to one output, leftovers of a killed or failed export,
and an OME-Zarr with a missing level. Real files, a 256 x 256 PNG, `bicubic-x4`."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from PIL import Image

from napari_srgan_sqe.cli import main
from napari_srgan_sqe.inference.export import enhance_slide
from napari_srgan_sqe.io.pyramid import (
    INCOMPLETE_MARKER,
    ExportError,
    lock_path,
    write_ome_tiff,
    write_ome_zarr,
)
from napari_srgan_sqe.io.slides import SlideError, open_slide

MODEL = "bicubic-x4"
META = np.empty((0, 0, 0), np.uint8)  # dask then never calls the function to guess it


@pytest.fixture
def png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(img).save(path)
    return path


def _hold(lock: Path) -> int:
    """Lock `lock` as another export's process would (own open file, flock)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.mark.parametrize("name", ["out.ome.zarr", "out.ome.tif"])
def test_second_export_to_same_output_is_refused(png, tmp_path, capsys, name) -> None:
    out = tmp_path / name
    enhance_slide(png, out, model=MODEL, tile=64)
    before = np.asarray(open_slide(out).levels[0])
    fd = _hold(lock_path(out))  # an export to `out` is running
    try:
        code = main(["enhance", str(png), str(out), "--model", MODEL, "--overwrite"])
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(out) in err and "another export is writing it" in err
    assert np.array_equal(np.asarray(open_slide(out).levels[0]), before)
    # the lock is free again: the same call works
    assert main(["enhance", str(png), str(out), "--model", MODEL, "--overwrite"]) == 0


def test_export_in_progress_keeps_its_result(png, tmp_path) -> None:
    """A second export while the first is computing is refused; the first completes."""
    out = tmp_path / "out.ome.zarr"
    img = np.asarray(open_slide(png).levels[0])
    started, go = threading.Event(), threading.Event()

    def slow(block):
        started.set()
        assert go.wait(60)
        return block

    level0 = da.from_array(img, chunks=(128, 128, 3)).map_blocks(slow, meta=META)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            write_ome_zarr(level0, out, chunk=128)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(60)
        with pytest.raises(ExportError, match="another export is writing it"):
            enhance_slide(png, out, model=MODEL, tile=64)
    finally:
        go.set()
        t.join(60)
    assert not errors
    assert np.array_equal(np.asarray(open_slide(out).levels[0]), img)
    assert not lock_path(out).exists()


def test_killed_export_leaves_no_stale_lock(png, tmp_path) -> None:
    out = tmp_path / "out.ome.tif"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from napari_srgan_sqe.io.pyramid import export_lock\n"
            "with export_lock(sys.argv[1]):\n"
            "    print('held', flush=True); time.sleep(60)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ExportError, match="another export"):
            enhance_slide(png, out, model=MODEL, tile=64)
    finally:
        holder.kill()
        holder.wait(30)
    assert lock_path(out).exists()  # left by the kill, but no longer locked
    enhance_slide(png, out, model=MODEL, tile=64)
    assert open_slide(out).levels[0].shape == (1024, 1024, 3)
    assert not lock_path(out).exists()


def test_orphan_temporary_tiff_is_removed(png, tmp_path) -> None:
    out = tmp_path / "out.ome.tif"
    orphan = tmp_path / ".out.ome.0123abcd.tmp.tif"  # a kill during TIFF streaming
    orphan.write_bytes(b"II*\0 partial")
    other = tmp_path / ".other.ome.0123abcd.tmp.tif"  # another output's: kept
    other.write_bytes(b"x")
    enhance_slide(png, out, model=MODEL, tile=64)
    assert out.is_file() and not orphan.exists() and other.exists()


@pytest.mark.parametrize("name", ["out.ome.zarr", "out.ome.tif"])
def test_input_failing_before_any_tile_leaves_nothing(png, tmp_path, capsys, name) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # truncated
    out = tmp_path / name
    code = main(["enhance", str(bad), str(out), "--model", MODEL, "--tile", "64"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and err.startswith("srgan-sqe enhance: error: cannot read"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "in.png"]


def test_input_failing_after_some_tiles_keeps_resumable_output(tmp_path) -> None:
    img = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)

    def fail_late(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 1:
            raise SlideError("in.tif", "the file is truncated")
        return block

    level0 = da.from_array(img, chunks=(128, 128, 3)).map_blocks(fail_late, meta=META)
    out = tmp_path / "out.ome.zarr"
    with pytest.raises(SlideError):
        write_ome_zarr(level0, out, chunk=128, concurrency=1)
    assert (out / INCOMPLETE_MARKER).exists()
    write_ome_zarr(img, out, chunk=128)  # resumes
    assert np.array_equal(np.asarray(open_slide(out).levels[0]), img)


def test_failure_writing_first_unit_removes_empty_output(tmp_path) -> None:
    img = np.zeros((256, 256, 3), np.uint8)

    def fail(block):
        raise OSError(5, "Input/output error")

    out = tmp_path / "out.ome.tif"
    level0 = da.from_array(img, chunks=(128, 128, 3)).map_blocks(fail, meta=META)
    with pytest.raises(ExportError, match="cannot write"):
        write_ome_tiff(level0, out, tile=128)
    assert list(tmp_path.iterdir()) == []


def test_ome_zarr_with_missing_level(png, tmp_path) -> None:
    out = tmp_path / "out.ome.zarr"
    img = np.asarray(open_slide(png).levels[0])
    write_ome_zarr(img, out, chunk=64)
    shutil.rmtree(out / "1")
    with pytest.raises(SlideError) as info:
        open_slide(out)
    message = str(info.value)
    assert str(out) in message and "level 1 is missing" in message and "'1'" in message


# --- one-line errors: an unreachable scheduler, memory, a full disk --------------------


def _free_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_scheduler_fails_fast_in_one_line(png, tmp_path, capsys) -> None:
    import time

    address = f"tcp://127.0.0.1:{_free_port()}"
    out = tmp_path / "out.ome.zarr"
    t0 = time.perf_counter()
    code = main(["enhance", str(png), str(out), "--model", MODEL, "--scheduler", address])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert code == 2 and seconds < 10, (code, seconds)
    assert err.splitlines()[-1].startswith(
        f"srgan-sqe enhance: error: cannot reach the dask scheduler at {address}: "
    )
    assert "Traceback" not in err and not out.exists()


_CHILD_OOM = """
import resource, sys
from napari_srgan_sqe.cli import main
from napari_srgan_sqe.models.registry import BUNDLED_MODELS  # imports torch
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
limit = vm + 1536 * 2**20  # 1.5 GiB more than the process has mapped after imports
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_tiles_too_large_for_memory_give_one_line(tmp_path) -> None:
    """A valid but huge tile (2048 px: the model's activations need several GiB) in a
    process with 1.5 GiB to spare: one line naming the tile and what to change."""
    img = np.random.default_rng(2).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    src = tmp_path / "big.png"
    Image.fromarray(img).save(src, compress_level=1)
    out = tmp_path / "out.ome.zarr"
    args = ["enhance", str(src), str(out), "--tile", "2048", "--device", "cpu", "--mpp", "0.5"]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD_OOM, *args], capture_output=True, text=True, timeout=300
    )
    err = done.stderr
    assert done.returncode == 2, err[-3000:]
    assert "srgan-sqe enhance: error: out of memory computing 2048 x 2048 px tiles" in err
    assert "--tile" in err and "Traceback" not in err
    assert not out.exists()


_CHILD_DISK_FULL = """
import errno, sys, threading
import zarr.storage._local as local
real_put, count, lock = local._put, [0], threading.Lock()

def put(path, value, exclusive=False):  # the disk fills up after 3 chunk files
    with lock:
        count[0] += 1
        full = count[0] > 3 and path.name not in (".zattrs", ".zgroup", ".zarray", "zarr.json")
    if full:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real_put(path, value, exclusive=exclusive)

local._put = put
from napari_srgan_sqe.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("name", ["out.ome.zarr", "out.ome.tif"])
def test_disk_full_is_one_line_without_asyncio_noise(tmp_path, name) -> None:
    """zarr writes a unit's chunks concurrently: the first ENOSPC is raised while the
    other writes still run; they must settle, not be torn down at exit ("Task was
    destroyed but it is pending!", "cannot schedule new futures after shutdown")."""
    img = np.random.default_rng(3).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    src = tmp_path / "in.png"
    Image.fromarray(img).save(src)
    out = tmp_path / name  # 2048 px SR in units of 4 x 4 chunks, written concurrently
    args = ["enhance", str(src), str(out), "--model", MODEL, "--mpp", "0.5"]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD_DISK_FULL, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = done.stderr
    assert done.returncode == 2, err[-3000:]
    assert f"srgan-sqe enhance: error: cannot write {out}: No space left on device" in err
    for noise in ("Task was destroyed", "never retrieved", "Traceback", "after shutdown"):
        assert noise not in err, err[-3000:]


# --- a truncated OME-TIFF, a missing OME-Zarr chunk ----------------------------------------


@pytest.fixture
def ome_tiff_levels(tmp_path) -> dict:
    """Exports of a 1024 px image (3 levels, 256 px tiles) in both layouts, and where
    each level's data end."""
    import tifffile

    img = np.random.default_rng(4).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    found = {}
    for layout in ("subifd", "both"):
        path = write_ome_tiff(img, tmp_path / f"{layout}.ome.tif", tile=256, layout=layout)
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            ends = [
                max(o + n for o, n in zip(lv.keyframe.dataoffsets, lv.keyframe.databytecounts))
                for lv in levels
            ]
            starts = [lv.keyframe.offset for lv in levels]
        found[layout] = (path, starts, ends)
    return found


@pytest.mark.parametrize("layout", ["subifd", "both"])
@pytest.mark.parametrize("cut", ["in level 2's directory", "in level 2's tiles", "at the end"])
def test_truncated_ome_tiff_names_the_level(ome_tiff_levels, tmp_path, layout, cut) -> None:
    """A file cut short used to open with its last level silently dropped."""
    path, starts, ends = ome_tiff_levels[layout]
    size = path.stat().st_size
    keep = {
        "in level 2's directory": starts[2] + 8,  # the IFD of level 2 is cut
        "in level 2's tiles": (starts[2] + ends[2]) // 2,
        "at the end": size - 100,  # the OME-XML (written last) is cut
    }[cut]
    cut_path = tmp_path / f"cut-{layout}.ome.tif"
    cut_path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(SlideError) as info:
        open_slide(cut_path)
    message = str(info.value)
    assert str(cut_path) in message and "truncated" in message
    if cut != "at the end":
        assert "level 2" in message
    assert len(open_slide(path).levels) == 3  # the whole file opens


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_missing_ome_zarr_chunk_is_refused_not_black(tmp_path, ngff) -> None:
    img = np.random.default_rng(5).integers(1, 255, (512, 768, 3), dtype=np.uint8)
    img[:128, :128] = 0  # a black chunk is stored too: it is not a missing one
    out = write_ome_zarr(img, tmp_path / "out.ome.zarr", chunk=128, ngff=ngff)
    assert np.array_equal(np.asarray(open_slide(out).levels[0]), img)
    black = out / ("0/0/0/0" if ngff == "0.4" else "0/c/0/0/0")
    assert black.is_file()  # the black chunk (the black shard for 0.5)

    victim = out / ("1/0/1/0" if ngff == "0.4" else "1/c/0/0/0")
    victim.unlink()  # a file lost in a copy
    slide = open_slide(out)  # metadata are whole
    np.asarray(slide.levels[0][:128, :128])  # other levels still read
    with pytest.raises(SlideError) as info:
        np.asarray(slide.levels[1])
    message = str(info.value)
    key = "1/0/1/0" if ngff == "0.4" else "1/c/0/0/0"
    assert str(out) in message and "level 1" in message and f"chunk '{key}'" in message
    assert "missing" in message
