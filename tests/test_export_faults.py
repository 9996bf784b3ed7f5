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
