"""Headless export: OME-Zarr / OME-TIFF, resume, tissue-only, dask.distributed, errors, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_srgan_sqe.inference.export import DataError, RegionError, enhance_slide
from napari_srgan_sqe.io.slides import open_slide
from napari_srgan_sqe.models.modelfile import save_model
from napari_srgan_sqe.models.predictor import Predictor
from tiny_runs import tiny

REGION = (101, 1203, 300, 250)  # x, y, w, h in LR px: odd offsets, partial edge tiles
TILE = 64


@pytest.fixture(scope="module")
def model():
    return tiny(0)


@pytest.fixture(scope="module")
def expected(cmu_svs: Path, model) -> np.ndarray:
    """REGION of the whole-slide SR: the whole-image reference of REGION plus a margin
    of more than the model's halo (equal to the whole slide's result there)."""
    return whole_slide_sr(cmu_svs, model, REGION)


def whole_slide_sr(cmu_svs: Path, model, region) -> np.ndarray:  # noqa: ANN001
    x, y, w, h = region
    lr0 = open_slide(cmu_svs).levels[0]
    m = 2 * model.halo
    y0, x0 = max(y - m, 0), max(x - m, 0)
    y1, x1 = min(y + h + m, lr0.shape[0]), min(x + w + m, lr0.shape[1])
    # the margin is cut at the slide border, where the reference mirrors like the slide
    assert (y0, x0) == (y - m, x - m) or y0 == 0 or x0 == 0
    sr = Predictor(model, device="cpu").predict_image(np.asarray(lr0[y0:y1, x0:x1]))
    return sr[4 * (y - y0) : 4 * (y - y0 + h), 4 * (x - x0) : 4 * (x - x0 + w)]


@pytest.fixture(scope="module")
def zarr_export(cmu_svs: Path, model, tmp_path_factory) -> tuple[Path, dict]:
    stats: dict = {}
    out = tmp_path_factory.mktemp("export") / "sr.ome.zarr"
    enhance_slide(cmu_svs, out, model=model, device="cpu", region=REGION, tile=TILE, stats=stats)
    return out, stats


def test_ome_zarr_opens_and_matches_memory(zarr_export, expected) -> None:
    import zarr

    out, stats = zarr_export
    group = zarr.open_group(out, mode="r")
    ms = group.attrs["multiscales"][0]
    assert group["0"].shape == (3, 1000, 1200)
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"][1:] == [0.499 / 4] * 2
    slide = open_slide(out)
    assert slide.mpp == pytest.approx(0.499 / 4)
    assert [lv.shape[:2] for lv in slide.levels][:2] == [(1000, 1200), (500, 600)]
    assert np.abs(np.asarray(slide.levels[0]).astype(int) - expected).max() <= 1
    assert stats["tiles_computed"] == 5 * 4 and stats["mpx_per_s"] > 0
    # where the pixels come from, to place the export back on its slide
    made = group.attrs["napari-srgan-sqe"]
    assert made["source"] == "CMU-1-Small-Region.svs" and made["region"] == "101,1203,300,250"
    assert made["model"] == stats["provenance"]["model"] and made["scale"] == "4"


def test_interrupted_export_resumes_without_recomputing(cmu_svs, model, expected, tmp_path) -> None:
    out = tmp_path / "resumed.zarr"

    def stop_after_7(done: int, total: int) -> None:
        if done >= 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        enhance_slide(
            cmu_svs, out, model=model, device="cpu", region=REGION, tile=TILE, progress=stop_after_7
        )
    assert (out / ".incomplete").exists()
    stats: dict = {}
    enhance_slide(cmu_svs, out, model=model, device="cpu", region=REGION, tile=TILE, stats=stats)
    assert stats["tiles_computed"] == 20 - 7  # one tile per written unit here
    assert not (out / ".incomplete").exists()
    assert np.abs(np.asarray(open_slide(out).levels[0]).astype(int) - expected).max() <= 1


def test_resume_refuses_a_replaced_source_of_the_same_size_and_time(
    he_crop, model, tmp_path
) -> None:
    """The reported case: an export killed after some chunks, its input replaced by
    another image of the same byte size and modification time (`cp -p`, `rsync -t`).
    The rerun must start over, not finish the old slide's SR."""
    import os

    import tifffile

    src = tmp_path / "slide.tif"
    a, b = he_crop[:256, :256], he_crop[300:556, 300:556]
    tifffile.imwrite(src, a, photometric="rgb", tile=(64, 64))  # uncompressed: same size
    out = tmp_path / "sr.ome.zarr"

    def stop_after_3(done: int, total: int) -> None:
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        enhance_slide(src, out, model=model, device="cpu", tile=TILE, progress=stop_after_3)
    st = src.stat()
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, b, photometric="rgb", tile=(64, 64))
    assert other.stat().st_size == st.st_size
    os.replace(other, src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (src.stat().st_size, src.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    stats: dict = {}
    enhance_slide(src, out, model=model, device="cpu", tile=TILE, stats=stats)
    assert stats["tiles_computed"] == 16  # all of it: nothing of the old slide was kept
    want = Predictor(model, device="cpu").predict_image(b)
    assert np.abs(np.asarray(open_slide(out).levels[0]).astype(int) - want).max() <= 1


def test_region_equals_crop_of_whole_slide_sr(cmu_svs, model, tmp_path) -> None:
    # halos past the region read the slide's real pixels (a crop of the slide differs by
    # up to 60 levels here, in tissue); past the slide border they mirror
    for i, region in enumerate([(1003, 701, 130, 90), (2220 - 100, 2967 - 70, 100, 70)]):
        out = enhance_slide(
            cmu_svs, tmp_path / f"r{i}.zarr", model=model, device="cpu", region=region, tile=TILE
        )
        got = np.asarray(open_slide(out).levels[0]).astype(int)
        assert np.abs(got - whole_slide_sr(cmu_svs, model, region)).max() <= 1


def test_resume_with_another_model_never_mixes(cmu_svs, model, expected, tmp_path) -> None:
    out = tmp_path / "mixed.zarr"

    def stop_after_7(done: int, total: int) -> None:
        if done >= 7:
            raise KeyboardInterrupt

    other = tiny(5)
    with pytest.raises(KeyboardInterrupt):
        enhance_slide(
            cmu_svs, out, model=other, device="cpu", region=REGION, tile=TILE, progress=stop_after_7
        )
    stats: dict = {}
    enhance_slide(cmu_svs, out, model=model, device="cpu", region=REGION, tile=TILE, stats=stats)
    assert stats["tiles_computed"] == 20  # nothing of model `other` was kept
    assert np.abs(np.asarray(open_slide(out).levels[0]).astype(int) - expected).max() <= 1
    # another region of the same size, or --tissue-only, restarts too
    out2 = tmp_path / "moved.zarr"
    with pytest.raises(KeyboardInterrupt):
        enhance_slide(
            cmu_svs, out2, model=model, device="cpu", region=(0, 0, 300, 250), tile=TILE,
            progress=stop_after_7,
        )  # fmt: skip
    stats = {}
    enhance_slide(cmu_svs, out2, model=model, device="cpu", region=REGION, tile=TILE, stats=stats)
    assert stats["tiles_computed"] == 20
    # a finished export of something else is never replaced without overwrite
    with pytest.raises(DataError, match="already exists.*overwrite"):
        enhance_slide(cmu_svs, out2, model=other, device="cpu", region=REGION, tile=TILE)


def test_ome_tiff_with_tissue_only(cmu_svs, model, expected, tmp_path) -> None:
    stats: dict = {}
    region = (0, 0, 512, 512)  # top-left corner: glass on the left, tissue on the right
    out = enhance_slide(
        cmu_svs, tmp_path / "sr.ome.tif", model=model, device="cpu", region=region,
        tile=128, tissue_only=True, stats=stats,
    )  # fmt: skip
    assert 0 < stats["tissue_tiles"] < 16 and stats["tiles_computed"] == stats["tissue_tiles"]
    slide = open_slide(out)
    assert slide.levels[0].shape == (2048, 2048, 3) and slide.mpp == pytest.approx(0.499 / 4)
    import tifffile

    with tifffile.TiffFile(out) as tif:  # the OME-XML's Description says how it was made
        assert "source=CMU-1-Small-Region.svs; region=0,0,512,512" in tif.ome_metadata


def test_distributed_equals_local(cmu_svs, model, zarr_export, tmp_path) -> None:
    from distributed import Client, LocalCluster

    from napari_srgan_sqe.inference import distributed as distributed_mod

    out = tmp_path / "cluster.ome.zarr"
    stats: dict = {}
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        enhance_slide(
            cmu_svs, out, model=model, device="cpu", region=REGION, tile=TILE,
            scheduler=cluster.scheduler_address, stats=stats,
        )  # fmt: skip
        with Client(cluster) as client:  # the model was loaded once per worker
            loaded = client.run(lambda: sorted(distributed_mod._MODELS))
            chunks = client.run(lambda: distributed_mod.CHUNKS_COMPUTED)
        assert len(loaded) == 2 and all(ids == [model.identity] for ids in loaded.values())
        assert sum(chunks.values()) == 20
    assert stats["remote_chunks"] == 20 and stats["tiles_computed"] == 0
    local = np.asarray(open_slide(zarr_export[0]).levels[0])
    assert np.abs(np.asarray(open_slide(out).levels[0]).astype(int) - local).max() <= 1


def test_clear_errors_before_any_work(cmu_svs, model, tmp_path) -> None:
    with pytest.raises(DataError, match="up-scales by 2, but scale 4 was requested"):
        enhance_slide(cmu_svs, tmp_path / "a.zarr", model=tiny(0, scale=2), scale=4, device="cpu")
    with pytest.raises(RegionError, match="not inside the slide, which is 2220 x 2967"):
        enhance_slide(cmu_svs, tmp_path / "b.zarr", model=model, region=(2000, 100, 500, 50))
    with pytest.raises(RegionError, match="empty"):
        enhance_slide(cmu_svs, tmp_path / "b.zarr", model=model, region=(0, 0, 0, 10))
    with pytest.raises(RegionError, match="four whole numbers"):  # not silently truncated
        enhance_slide(cmu_svs, tmp_path / "b.zarr", model=model, region=(0.5, 0, 64, 64))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="is not a folder"):
        enhance_slide(cmu_svs, blocker / "c.zarr", model=model)
    with pytest.raises(DataError, match="does not exist"):
        enhance_slide(cmu_svs, tmp_path / "missing" / "c.zarr", model=model)
    with pytest.raises(DataError, match="output format"):
        enhance_slide(cmu_svs, tmp_path / "c.png", model=model)
    with pytest.raises(DataError, match="threads must be a whole number of at least 1, got 0"):
        enhance_slide(cmu_svs, tmp_path / "d.zarr", model=model, threads=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_enhance(cmu_svs, model, tmp_path, capsys) -> None:
    from napari_srgan_sqe.cli import main

    model_file = save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "cli.ome.zarr"
    argv = ["enhance", str(cmu_svs), str(out), "--model", str(model_file), "--device", "cpu"]
    import torch

    before = torch.get_num_threads()
    try:  # --threads 1: what a shared machine's user asks for, and torch keeps it
        assert main([*argv, "--region", "10,20,64,64", "--tile", "64", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "Mpx/s" in printed and "peak RSS" in printed
    assert open_slide(out).levels[0].shape == (256, 256, 3)
    assert main([*argv, "--region", "10,20,64,64"]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    argv[2] = str(tmp_path / "other.ome.zarr")
    assert main([*argv, "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
    assert main([*argv, "--region", "0,0,99999,10"]) == 2
    err = capsys.readouterr().err
    assert "error: region x=0 y=0 w=99999 h=10 is not inside the slide" in err
    assert main([*argv, "--region", "-10,0,64,64"]) == 2  # a value, not an option
    assert "error: region x=-10 y=0 w=64 h=64 is not inside" in capsys.readouterr().err
    assert "Traceback" not in err and not (tmp_path / "other.ome.zarr").exists()


def test_overwrite_replaces_only_an_export_of_the_same_kind(cmu_svs, model, tmp_path) -> None:
    """--overwrite never deletes a folder that is not an OME-Zarr, nor computes an OME-TIFF
    it cannot put in place of a folder: both are refused before any work."""
    notes = tmp_path / "important.zarr" / "sub" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("keep me")
    folder_tif = tmp_path / "folder.tif"
    folder_tif.mkdir()
    a_file = tmp_path / "file.zarr"
    a_file.write_text("a file")
    stats: dict = {}
    cases = [
        (notes.parents[1], "has no zarr metadata at its top"),
        (folder_tif, "is a folder, not replacing it with an OME-TIFF"),
        (a_file, "is a file, not replacing it with an OME-Zarr"),
    ]
    for out, reason in cases:
        with pytest.raises(DataError, match=reason):
            enhance_slide(
                cmu_svs, out, model=model, device="cpu", region=(0, 0, 64, 64), tile=TILE,
                overwrite=True, stats=stats,
            )  # fmt: skip
    assert stats == {}  # nothing was computed
    assert notes.read_text() == "keep me" and folder_tif.is_dir() and a_file.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "file.zarr",
        "folder.tif",
        "important.zarr",
    ]
    # an export of ours is replaced
    out = tmp_path / "ours.zarr"
    enhance_slide(cmu_svs, out, model=model, device="cpu", region=(0, 0, 64, 64), tile=TILE)
    enhance_slide(
        cmu_svs, out, model=model, device="cpu", region=(0, 0, 32, 32), tile=TILE, overwrite=True
    )
    assert open_slide(out).levels[0].shape == (128, 128, 3)


def test_cli_checks_the_output_first_and_says_how_to_resume(
    cmu_svs, model, tmp_path, capsys, monkeypatch
) -> None:
    from napari_srgan_sqe.cli import main
    from napari_srgan_sqe.io import pyramid

    model_file = save_model(model, tmp_path / "tiny.safetensors")
    (tmp_path / "exists.tif").write_bytes(b"")
    argv = ["enhance", str(cmu_svs), "--model", str(model_file), "--device", "cpu"]
    for out, reason in [("exists.tif", "already exists"), ("out.png", "output format")]:
        assert main([*argv[:2], str(tmp_path / out), *argv[2:]]) == 2
        printed = capsys.readouterr()
        assert reason in printed.err and printed.out == ""  # before the input and model lines
    assert main([*argv[:2], str(tmp_path / "a.zarr"), *argv[2:], "--scale", "2"]) == 2
    printed = capsys.readouterr()
    assert "up-scales by 4, not by --scale 2" in printed.err and "scale: x4" not in printed.out

    # interrupted after some chunks: the hint; the same command resumes and says so
    out = tmp_path / "cut.ome.zarr"
    write_levels = pyramid._write_levels

    def stop_after_3(*args, progress, **kwargs):
        def stop(done: int, total: int) -> None:
            progress(done, total)
            if done >= 3:
                raise KeyboardInterrupt

        return write_levels(*args, progress=stop, **kwargs)

    region = ["--region", "0,0,256,256", "--tile", "64"]
    monkeypatch.setattr(pyramid, "_write_levels", stop_after_3)
    assert main([*argv[:2], str(out), *argv[2:], *region]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    monkeypatch.setattr(pyramid, "_write_levels", write_levels)
    assert main([*argv[:2], str(out), *argv[2:], *region]) == 0
    printed = capsys.readouterr().out
    assert "resuming an interrupted export: 3 of " in printed
    assert "the 18 chunks left of 21" in printed and "Mpx/s" not in printed


def test_sigterm_stops_an_export_like_ctrl_c(cmu_svs, model, tmp_path, capsys, monkeypatch):
    """`kill`, `timeout` or a batch system's time limit: no temporary TIFF or lock left
    behind, the computed chunks kept, exit status 143; the same command resumes."""
    import os
    import signal

    from napari_srgan_sqe.cli import main
    from napari_srgan_sqe.io import pyramid

    model_file = save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "cut.ome.tif"
    argv = ["enhance", str(cmu_svs), str(out), "--model", str(model_file), "--device", "cpu",
            "--region", "0,0,256,256", "--tile", "64"]  # fmt: skip
    write_levels = pyramid._write_levels

    def term_after_3(*args, progress, **kwargs):
        def term(done: int, total: int) -> None:
            progress(done, total)
            if done == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        return write_levels(*args, progress=term, **kwargs)

    monkeypatch.setattr(pyramid, "_write_levels", term_after_3)
    handler = signal.getsignal(signal.SIGTERM)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "terminated" in err and "run the same command again to resume" in err
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".cut.ome.tif.partial.zarr", "tiny.safetensors"], left
    assert signal.getsignal(signal.SIGTERM) == handler  # the command's is gone with it
    monkeypatch.setattr(pyramid, "_write_levels", write_levels)
    assert main(argv) == 0
    assert "resuming an interrupted export: 3 of " in capsys.readouterr().out
    assert open_slide(out).levels[0].shape == (1024, 1024, 3)


@pytest.mark.parametrize("name", ["in.ome.tif", "in.ome.zarr"])
def test_an_export_over_its_own_input_is_refused_and_the_input_kept(
    model, he_crop, tmp_path, capsys, name
) -> None:
    """`enhance x x --overwrite` would replace the slide it reads with its SR."""
    import tifffile
    from PIL import Image

    from napari_srgan_sqe.cli import main

    src = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(src, he_crop[:96, :128], photometric="rgb")
    else:  # an earlier export
        png = tmp_path / "lr.png"
        Image.fromarray(he_crop[:24, :32]).save(png)
        enhance_slide(png, src, model=model, device="cpu", mpp=0.5)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    with pytest.raises(DataError, match="it is the input"):
        enhance_slide(src, src, model=model, device="cpu", overwrite=True)
    assert main(["enhance", str(src), str(src), "--overwrite", "--device", "cpu"]) == 2
    assert "it is the input" in capsys.readouterr().err
    if name.endswith(".zarr"):  # an output inside the input folder, or holding it
        with pytest.raises(DataError, match="lies inside the input"):
            enhance_slide(src, src / "sub.ome.zarr", model=model, device="cpu")
    after = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert after == before


def test_non_utf8_file_names_export_to_ome_tiff_and_ome_zarr(he_crop, model, tmp_path) -> None:
    """The reported case: an input whose name is not valid UTF-8 crashed OME-TIFF export
    after the whole computation (UnicodeEncodeError writing the OME description) and
    left the staging folder. Its bad byte is now written as a \\xff escape."""
    import os

    import tifffile
    from PIL import Image

    src = tmp_path / os.fsdecode(b"tissue-\xff.png")
    Image.fromarray(he_crop[:64, :64]).save(src)
    for suffix in (b".ome.tif", b".ome.zarr"):
        out = tmp_path / os.fsdecode(b"sr-\xfe" + suffix)
        enhance_slide(src, out, model=model, device="cpu", tile=TILE, mpp=0.5)
        assert open_slide(out).shape == (256, 256, 3)
        if suffix == b".ome.tif":
            with tifffile.TiffFile(out) as tif:
                ome = tif.ome_metadata
            assert "source=tissue-\\xff.png" in ome and 'Name="sr-\\xfe"' in ome
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [
        b"sr-\xfe.ome.tif", b"sr-\xfe.ome.zarr", b"tissue-\xff.png"
    ]  # fmt: skip


# --- where an export lies: NGFF translation, OME-TIFF plane position ------------------

PLACED = (757, 1963, 120, 88)  # x, y, w, h in LR px: odd offsets, in tissue


def _level0_translation(group) -> list[float]:  # noqa: ANN001
    attrs = group.attrs.asdict()
    ms = (attrs["ome"] if "ome" in attrs else attrs)["multiscales"][0]
    transforms = ms["datasets"][0]["coordinateTransformations"]
    assert [t["type"] for t in transforms] == ["scale", "translation"]
    return transforms[1]["translation"]


def _plane_position(path: Path) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    import tifffile

    with tifffile.TiffFile(path) as tif:
        root = ET.fromstring(tif.ome_metadata)
    [plane] = [el for el in root.iter() if el.tag.endswith("}Plane")]
    return dict(plane.attrib)


@pytest.mark.parametrize(
    "name,ngff", [("sr.ome.zarr", "0.4"), ("sr.ome.zarr", "0.5"), ("sr.ome.tif", "0.4")]
)
def test_export_of_a_region_is_placed_on_its_source(cmu_svs, model, tmp_path, name, ngff) -> None:
    import zarr

    x, y, w, h = PLACED
    mpp = 0.499
    out = enhance_slide(
        cmu_svs, tmp_path / name, model=model, device="cpu", region=PLACED, tile=TILE, ngff=ngff
    )
    # SR pixel (0, 0) covers the top-left quarter of LR pixel (y, x): its centre lies
    # 3/8 LR px up and left of that pixel's centre, its corner on the region's corner
    want = ((y - 3 / 8) * mpp, (x - 3 / 8) * mpp)
    if name.endswith(".zarr"):
        group = zarr.open_group(out, mode="r")
        assert _level0_translation(group) == pytest.approx([0.0, *want])
        ms = group.attrs.asdict()
        ms = (ms["ome"] if "ome" in ms else ms)["multiscales"][0]
        # level 1 (2 x 2 means): its pixel centres sit half a level-0 px further in
        level1 = ms["datasets"][1]["coordinateTransformations"][1]["translation"]
        assert level1 == pytest.approx([0.0, want[0] + mpp / 8, want[1] + mpp / 8])
    else:
        plane = _plane_position(out)
        assert plane["PositionXUnit"] == plane["PositionYUnit"] == "µm"
        assert (float(plane["PositionY"]), float(plane["PositionX"])) == pytest.approx(want)
    slide = open_slide(out)
    assert slide.origin == pytest.approx(want) and slide.mpp == pytest.approx(mpp / 4)
    corner = np.subtract(slide.origin, slide.mpp / 2)  # of the export's first pixel
    assert corner == pytest.approx([(y - 0.5) * mpp, (x - 0.5) * mpp])
    far = corner + np.multiply(slide.shape[:2], slide.mpp)  # its last pixel's far corner
    assert far == pytest.approx([(y + h - 0.5) * mpp, (x + w - 0.5) * mpp])


def test_an_export_of_an_export_lands_on_the_first_source(cmu_svs, model, tmp_path) -> None:
    x, y, _, _ = PLACED
    first = enhance_slide(
        cmu_svs, tmp_path / "a.ome.zarr", model=model, device="cpu", region=PLACED, tile=TILE
    )
    o1, m1 = open_slide(first).origin, 0.499 / 4
    # a region of the export, exported again (bicubic: cheap), to OME-TIFF this time
    second = enhance_slide(
        first, tmp_path / "b.ome.tif", model="bicubic-x4", region=(41, 17, 64, 48)
    )
    slide = open_slide(second)
    assert slide.origin == pytest.approx((o1[0] + (17 - 3 / 8) * m1, o1[1] + (41 - 3 / 8) * m1))
    # its first corner is the corner of source pixel (y + 17/4, x + 41/4) - 1/2
    corner = np.subtract(slide.origin, slide.mpp / 2) / 0.499
    assert corner == pytest.approx([y - 0.5 + 17 / 4, x - 0.5 + 41 / 4])


def test_without_a_pixel_size_the_origin_is_in_export_pixels(he_png, model, tmp_path) -> None:
    import warnings

    import zarr

    from napari_srgan_sqe.inference.export import PixelSizeWarning

    kwargs = {"model": model, "device": "cpu", "region": (10, 7, 64, 32), "tile": 64}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PixelSizeWarning)
        zarr_out = enhance_slide(he_png, tmp_path / "a.ome.zarr", **kwargs)
        tif_out = enhance_slide(he_png, tmp_path / "a.ome.tif", **kwargs)
    want = (4 * 7 - 1.5, 4 * 10 - 1.5)  # SR px, the units of the scale (1 per px)
    assert _level0_translation(zarr.open_group(zarr_out, mode="r")) == [0.0, *want]
    plane = _plane_position(tif_out)
    assert plane["PositionXUnit"] == plane["PositionYUnit"] == "pixel"
    for out in (zarr_out, tif_out):
        slide = open_slide(out)
        assert slide.mpp is None and slide.origin == pytest.approx(want)
