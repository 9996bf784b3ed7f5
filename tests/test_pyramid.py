"""Pyramid writers: round trips, lazy read-back, resumption, atomicity, full disk."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from napari_srgan_sqe.io._formats import INCOMPLETE_MARKER
from napari_srgan_sqe.io.atomic import atomic_path
from napari_srgan_sqe.io.pyramid import write_ome_tiff, write_ome_zarr
from napari_srgan_sqe.io.slides import SlideError, open_slide


class Interrupted(Exception):
    """Stands for Ctrl-C or a killed job in the middle of an export."""


def halve(img: np.ndarray) -> np.ndarray:
    """Reference 2 x 2 mean, rounded half up, edge rows / columns repeated."""
    h, w = img.shape[:2]
    img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.uint16)
    s = img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def counted(img: np.ndarray, chunk: int) -> tuple[da.Array, list[tuple[int, ...]]]:
    """`img` as a dask array that records each chunk it computes (an expensive SR stand-in)."""
    calls: list[tuple[int, ...]] = []

    def produce(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        calls.append(tuple(block_info[None]["chunk-location"]))
        return block

    arr = da.from_array(img, chunks=(chunk, chunk, 3))
    return arr.map_blocks(produce, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8)), calls


def count_chunk_gets(monkeypatch: pytest.MonkeyPatch, store_cls: type) -> list[str]:
    """Record the chunk keys (not metadata) a zarr store class serves; reads still happen."""
    keys: list[str] = []
    real = store_cls.get

    async def counting(self, key, *args, **kwargs):
        name = key.rsplit("/", 1)[-1]
        if not name.startswith(".") and name != "zarr.json":
            keys.append(key)
        return await real(self, key, *args, **kwargs)

    monkeypatch.setattr(store_cls, "get", counting)
    return keys


@pytest.fixture(scope="module")
def expected(he_crop: np.ndarray) -> list[np.ndarray]:
    return [he_crop, halve(he_crop), halve(halve(he_crop))]


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["ome-zarr", "ome-tiff"])
def test_round_trip_three_levels(fmt: str, he_crop, expected, tmp_path: Path) -> None:
    path = tmp_path / ("he.ome.zarr" if fmt == "ome-zarr" else "he.ome.tif")
    progress: list[tuple[int, int]] = []
    write = write_ome_zarr if fmt == "ome-zarr" else write_ome_tiff
    size = {"chunk": 256} if fmt == "ome-zarr" else {"tile": 256}
    assert (
        write(he_crop, path, mpp=0.25, progress=lambda d, t: progress.append((d, t)), **size)
        == path
    )
    slide = open_slide(path)
    assert slide.format == fmt
    assert slide.mpp == pytest.approx(0.25)
    assert slide.downsamples == [1.0, 2.0, 4.0]
    for got, want in zip(slide.levels, expected, strict=True):
        np.testing.assert_array_equal(got.compute(), want)
    assert progress[-1][0] == progress[-1][1] and progress == sorted(progress)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging or temporary left


def test_given_levels_are_written_as_given(he_crop, tmp_path: Path) -> None:
    other = np.ascontiguousarray(he_crop[::-2, ::2])  # not the mean of level 0
    write_ome_zarr([he_crop, other], tmp_path / "two.ome.zarr", chunk=256)
    levels = open_slide(tmp_path / "two.ome.zarr").levels
    assert len(levels) == 2
    np.testing.assert_array_equal(levels[1].compute(), other)


def test_ngff_metadata(he_crop, tmp_path: Path) -> None:
    path = write_ome_zarr(he_crop[:300, :200], tmp_path / "m.ome.zarr", mpp=0.5, chunk=128)
    ms = json.loads((path / ".zattrs").read_text())["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][1]["unit"] == ms["axes"][2]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    assert ms["datasets"][1]["coordinateTransformations"][1]["translation"] == [0.0, 0.25, 0.25]
    zarray = json.loads((path / "0" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["dimension_separator"] == "/"
    assert zarray["chunks"] == [3, 128, 128] and zarray["shape"] == [3, 300, 200]


def test_misaligned_input_chunks_computed_once(he_crop, tmp_path: Path) -> None:
    src, calls = counted(he_crop, 300)  # 300 px input chunks, 256 px output chunks
    write_ome_zarr(src, tmp_path / "a.ome.zarr", chunk=256, n_levels=2)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 16
    np.testing.assert_array_equal(open_slide(tmp_path / "a.ome.zarr").levels[0].compute(), he_crop)


# ---------------------------------------------------------------- lazy read-back
@pytest.mark.parametrize("fmt", ["ome-zarr", "ome-tiff"])
def test_read_back_is_lazy(
    fmt: str, he_crop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tifffile.zarr
    import zarr.storage

    if fmt == "ome-zarr":
        path = write_ome_zarr(he_crop, tmp_path / "l.ome.zarr", chunk=256)
        keys = count_chunk_gets(monkeypatch, zarr.storage.LocalStore)
    else:
        path = write_ome_tiff(he_crop, tmp_path / "l.ome.tif", tile=256)
        keys = count_chunk_gets(monkeypatch, tifffile.zarr.ZarrTiffStore)
    slide = open_slide(path)
    assert keys == []  # opening read no pixels
    region = slide.levels[0][10:20, 10:20].compute()
    np.testing.assert_array_equal(region, he_crop[10:20, 10:20])
    assert len(keys) == 4  # one 512 px dask chunk = 2 x 2 stored 256 px chunks, nothing more
    slide.levels[2][:5, :5].compute()
    assert len(keys) == 5 and all(k.startswith("2/") for k in keys[4:])


# ---------------------------------------------------------------- resumption
def stop_after(n: int):
    def progress(done: int, total: int) -> None:
        if done >= n:
            raise Interrupted(f"stopped after {done} of {total}")

    return progress


def test_ome_zarr_resumes_after_interruption(he_crop, expected, tmp_path: Path) -> None:
    path = tmp_path / "r.ome.zarr"
    src, calls = counted(he_crop, 256)  # 4 x 4 chunks at level 0
    with pytest.raises(Interrupted):
        write_ome_zarr(src, path, chunk=256, n_levels=3, progress=stop_after(5))
    assert (path / INCOMPLETE_MARKER).exists()
    with pytest.raises(SlideError, match="interrupted"):
        open_slide(path)
    # the unit after the last recorded one was being written when the process died
    (path / "0" / "0" / "1" / "1").write_bytes(b"half a chunk")

    calls.clear()
    progress: list[int] = []
    write_ome_zarr(src, path, chunk=256, n_levels=3, progress=lambda d, t: progress.append(d))
    assert len(calls) == 16 - 5  # recorded units were not computed again
    assert progress[0] == 5
    assert not (path / INCOMPLETE_MARKER).exists()
    for got, want in zip(open_slide(path).levels, expected, strict=True):
        np.testing.assert_array_equal(got.compute(), want)


def test_ome_zarr_restarts_when_settings_changed(he_crop, tmp_path: Path) -> None:
    path = tmp_path / "r.ome.zarr"
    with pytest.raises(Interrupted):
        write_ome_zarr(he_crop, path, chunk=256, progress=stop_after(3))
    src, calls = counted(he_crop[:512], 256)  # another image: nothing may be reused
    write_ome_zarr(src, path, chunk=256)
    assert len(calls) == 8
    np.testing.assert_array_equal(open_slide(path).levels[0].compute(), he_crop[:512])


def test_ome_zarr_restarts_when_fingerprint_differs(he_crop, tmp_path: Path) -> None:
    # same shapes, other data (another model / slide): nothing of the first run is kept
    path = tmp_path / "f.ome.zarr"
    other = 255 - he_crop
    with pytest.raises(Interrupted):
        write_ome_zarr(other, path, chunk=256, progress=stop_after(5), fingerprint="model A")
    src, calls = counted(he_crop, 256)
    write_ome_zarr(src, path, chunk=256, fingerprint="model B")
    assert len(calls) == 16
    np.testing.assert_array_equal(open_slide(path).levels[0].compute(), he_crop)
    # the same fingerprint resumes
    path2 = tmp_path / "g.ome.zarr"
    with pytest.raises(Interrupted):
        write_ome_zarr(he_crop, path2, chunk=256, progress=stop_after(5), fingerprint="B")
    src, calls = counted(he_crop, 256)
    write_ome_zarr(src, path2, chunk=256, fingerprint="B")
    assert len(calls) == 16 - 5


def test_interrupted_overwrite_keeps_old_ome_zarr(he_crop, tmp_path: Path) -> None:
    path = write_ome_zarr(he_crop[:256, :256], tmp_path / "o.ome.zarr", chunk=128)
    with pytest.raises(Interrupted):
        write_ome_zarr(he_crop, path, chunk=128, overwrite=True, progress=stop_after(3))
    assert not (path / INCOMPLETE_MARKER).exists()
    np.testing.assert_array_equal(open_slide(path).levels[0].compute(), he_crop[:256, :256])
    # the same call resumes the staged overwrite, then swaps it in
    src, calls = counted(he_crop, 128)
    write_ome_zarr(src, path, chunk=128, overwrite=True)
    assert len(calls) < 64
    np.testing.assert_array_equal(open_slide(path).levels[0].compute(), he_crop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.ome.zarr"]


def test_existing_export_needs_overwrite(he_crop, tmp_path: Path) -> None:
    path = write_ome_zarr(he_crop[:64, :64], tmp_path / "e.ome.zarr", chunk=64)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_ome_zarr(he_crop[:64, :64], path, chunk=64)
    write_ome_zarr(he_crop[:32, :48], path, chunk=64, overwrite=True)
    assert open_slide(path).levels[0].shape == (32, 48, 3)
    folder = tmp_path / "not-zarr"
    folder.mkdir()
    with pytest.raises(FileExistsError, match="has no zarr metadata at its top"):
        write_ome_zarr(he_crop[:64, :64], folder, overwrite=True)
    named = tmp_path / "named.zarr"  # the name alone does not make it an export
    (named / "notes.txt").parent.mkdir()
    (named / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="has no zarr metadata at its top"):
        write_ome_zarr(he_crop[:64, :64], named, overwrite=True)
    assert (named / "notes.txt").read_text() == "keep"
    tif_folder = tmp_path / "folder.ome.tif"
    tif_folder.mkdir()
    with pytest.raises(FileExistsError, match="is a folder"):
        write_ome_tiff(he_crop[:64, :64], tif_folder, overwrite=True)
    assert tif_folder.is_dir() and not list(tmp_path.glob(".folder*"))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint16), np.zeros((8, 8, 4), np.uint8)],
)
def test_writers_refuse_other_arrays(bad: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(y, x, 3\) uint8"):
        write_ome_zarr(bad, tmp_path / "x.ome.zarr")
    assert not (tmp_path / "x.ome.zarr").exists()


# ---------------------------------------------------------------- OME-TIFF atomicity
def test_interrupted_ome_tiff_leaves_old_file_and_resumes(he_crop, tmp_path: Path) -> None:
    path = tmp_path / "a.ome.tif"
    path.write_bytes(b"previous export")
    src, calls = counted(he_crop, 256)
    units = 16 + 4 + 1  # staging chunks of levels 0, 1, 2 (256 px)
    with pytest.raises(Interrupted):  # stopped while streaming TIFF tiles
        write_ome_tiff(src, path, tile=256, progress=stop_after(units + 3), overwrite=True)
    assert path.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.ome.tif.partial.zarr", "a.ome.tif"]

    calls.clear()
    write_ome_tiff(src, path, tile=256, overwrite=True)
    assert calls == []  # the staged pyramid was reused
    assert [p.name for p in tmp_path.iterdir()] == ["a.ome.tif"]
    np.testing.assert_array_equal(open_slide(path).levels[0].compute(), he_crop)


def test_interrupted_new_ome_tiff_leaves_no_file(he_crop, tmp_path: Path) -> None:
    path = tmp_path / "new.ome.tif"
    with pytest.raises(Interrupted):
        write_ome_tiff(he_crop[:300, :300], path, tile=128, progress=stop_after(12), resume=False)
    assert not path.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    from napari_srgan_sqe.io.pyramid import ExportError, write_ome_tiff, write_ome_zarr
    img = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    img[:256] = 0  # the zarr's first row of chunks fits (so it is kept, resumable)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    for write, path, options in (
        (write_ome_tiff, sys.argv[1], {"compression": None}),
        (write_ome_zarr, sys.argv[2], {"chunk": 256}),
    ):
        try:
            write(img, path, **options)
        except ExportError as exc:
            print(f"{exc.errno}|{exc.filename}|{exc}")
    """
)


def test_full_disk_gives_clear_error(tmp_path: Path) -> None:
    """A file-size limit makes writes fail as on a full disk (EFBIG instead of ENOSPC)."""
    tiff, zarr_ = tmp_path / "out.ome.tif", tmp_path / "out.ome.zarr"
    run = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tiff), str(zarr_)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2, run.stdout
    for line, path in zip(lines, (tiff, zarr_)):
        errno_, filename, message = line.split("|", 2)
        assert int(errno_) == 27 and filename == str(path)
        assert message.startswith(f"cannot write {path}: File too large")
    assert not tiff.exists()  # nothing under the final name
    assert (zarr_ / INCOMPLETE_MARKER).exists()  # marked incomplete, resumable
    with pytest.raises(SlideError, match="interrupted"):
        open_slide(zarr_)


# ---------------------------------------------------------------- atomic_path
def test_atomic_path_file(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".safetensors" and tmp.name.startswith(".")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_atomic_path_directory(tmp_path: Path) -> None:
    target = tmp_path / "out.zarr"
    for content in ("first", "second"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "data").write_text(content)
    assert (target / "data").read_text() == "second"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.mkdir()
        raise KeyboardInterrupt
    assert (target / "data").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]
    with (
        pytest.raises(FileNotFoundError, match="does not exist"),
        atomic_path(tmp_path / "no" / "x"),
    ):
        pass
