"""Exports and inputs that other tools open: OME-TIFF pyramids seen by OpenSlide and
tifffile alike, JPEG exports, ICC profiles carried, DICOM WSI read through OpenSlide,
and inputs without a pixel size. Every check uses the real readers (OpenSlide, tifffile,
zarr); every image is made from the bundled sample slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import torch

from napari_srgan_sqe.config import ModelConfig, generator_preset
from napari_srgan_sqe.inference.export import DataError, PixelSizeWarning, enhance_slide
from napari_srgan_sqe.io.pyramid import codec_options, write_ome_tiff, write_ome_zarr
from napari_srgan_sqe.io.slides import SlideError, open_slide
from napari_srgan_sqe.models.modelfile import new_model, save_model

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def halve(img: np.ndarray) -> np.ndarray:
    """2 x 2 mean, rounded, of an image with even sides."""
    s = sum(img[dy::2, dx::2].astype(np.uint16) for dy in (0, 1) for dx in (0, 1))
    return ((s + 2) // 4).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def read_region(slide: openslide.OpenSlide, level: int, y: int, x: int, h: int, w: int):
    """OpenSlide's read_region of a level, in that level's pixels, as RGB."""
    d = slide.level_downsamples[level]
    region = slide.read_region((round(x * d), round(y * d)), level, (w, h))
    return np.asarray(region.convert("RGB"))


@pytest.fixture(scope="module")
def srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return new_model(ModelConfig(name="tiny0", generator=generator_preset("tiny", 4)))


# --- OME-TIFF pyramids: OpenSlide and tifffile ---------------------------------------


def test_ome_tiff_pyramid_is_seen_by_openslide_and_tifffile(he_crop, tmp_path: Path) -> None:
    out = write_ome_tiff(he_crop, tmp_path / "p.ome.tif", mpp=0.25, tile=256)
    expected = [he_crop, halve(he_crop), halve(halve(he_crop))]
    with openslide.OpenSlide(out) as slide:  # a generic tiled TIFF to OpenSlide
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1000, 1000), (500, 500), (250, 250))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        for level in range(3):
            got = read_region(slide, level, 37, 101, 120, 140)  # across tile edges
            assert np.array_equal(got, expected[level][37:157, 101:241]), level
    with tifffile.TiffFile(out) as tif:  # one OME image, its levels in SubIFDs
        assert tif.is_ome and len(tif.series) == 1
        assert tif.ome_metadata.count("<Image ") == 1
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(1000, 1000, 3), (500, 500, 3), (250, 250, 3)]
        assert len(tif.pages.first.subifds) == 2 and len(tif.pages) == 3
        for level in range(3):
            assert np.array_equal(levels[level].asarray(), expected[level])
    slide = open_slide(out)  # and our own reader
    assert len(slide.levels) == 3 and slide.mpp == pytest.approx(0.25)
    assert np.array_equal(np.asarray(slide.levels[1]), expected[1])


def test_subifd_layout_is_strict_ome_tiff(he_crop, tmp_path: Path) -> None:
    out = write_ome_tiff(he_crop, tmp_path / "s.ome.tif", tile=256, layout="subifd")
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == 1 and len(tif.series[0].levels) == 3
    with openslide.OpenSlide(out) as slide:  # the trade-off the default avoids
        assert slide.level_count == 1
    with pytest.raises(ValueError, match="layout must be one of both, subifd"):
        write_ome_tiff(he_crop, tmp_path / "x.ome.tif", layout="pages")


def test_jpeg_ome_tiff_opens_in_openslide_and_tifffile(he_crop, tmp_path: Path) -> None:
    lossless = write_ome_tiff(he_crop, tmp_path / "zlib.ome.tif", tile=256)
    out = write_ome_tiff(
        he_crop, tmp_path / "q90.ome.tif", tile=256, compression="jpeg", quality=90
    )
    assert out.stat().st_size < lossless.stat().st_size / 3
    with tifffile.TiffFile(out) as tif:
        page = tif.pages.first
        assert page.compression == tifffile.COMPRESSION.JPEG
        assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
        via_tifffile = [lv.asarray() for lv in tif.series[0].levels]
    with openslide.OpenSlide(out) as slide:
        assert slide.level_count == 3
        for level in (0, 1):
            h, w = via_tifffile[level].shape[:2]
            got = read_region(slide, level, 0, 0, h, w)
            assert np.abs(got.astype(int) - via_tifffile[level]).max() <= 2
    assert psnr(via_tifffile[0], he_crop) > 27  # 28.5 dB: 4:2:0 of a JPEG-coded input
    assert np.array_equal(np.asarray(open_slide(out).levels[0]), via_tifffile[0])
    small = write_ome_tiff(
        he_crop, tmp_path / "q50.ome.tif", tile=256, compression="jpeg", quality=50
    )
    assert small.stat().st_size < out.stat().st_size


def test_codec_options_refuse_what_readers_cannot_open(tmp_path: Path) -> None:
    assert codec_options("tiff") == {"compression": "zlib"}
    assert codec_options("tiff", "jpeg") == {"compression": "jpeg", "quality": 90}
    assert codec_options("tiff", "jpeg", 75)["quality"] == 75
    with pytest.raises(ValueError, match="OME-TIFF only"):
        codec_options("zarr", "jpeg", 90)
    with pytest.raises(ValueError, match="1 to 100"):
        codec_options("tiff", "jpeg", 0)
    with pytest.raises(ValueError, match="lossy compression"):
        codec_options("tiff", "lossless", 90)
    with pytest.raises(ValueError, match="unknown compression 'webp'"):
        codec_options("tiff", "webp")


def test_icc_profile_is_carried_into_the_ome_tiff(he_crop, srgb_icc, tmp_path: Path) -> None:
    src = tmp_path / "icc.tif"
    tifffile.imwrite(src, he_crop, tile=(256, 256), photometric="rgb", iccprofile=srgb_icc)
    slide = open_slide(src)
    assert slide.metadata["icc_profile"] == srgb_icc
    out = write_ome_tiff(slide.levels, tmp_path / "out.ome.tif", icc_profile=srgb_icc)
    with openslide.OpenSlide(out) as exported:
        assert exported.color_profile is not None
        assert exported.color_profile.tobytes() == srgb_icc
    assert open_slide(out).metadata["icc_profile"] == srgb_icc
    png = tmp_path / "icc.png"  # an embedded PNG profile is kept as well
    from PIL import Image

    Image.fromarray(he_crop[:64, :64]).save(png, icc_profile=srgb_icc)
    assert open_slide(png).metadata["icc_profile"] == srgb_icc
    # without a profile, none is made up
    plain = write_ome_tiff(he_crop, tmp_path / "plain.ome.tif")
    with openslide.OpenSlide(plain) as exported:
        assert exported.color_profile is None


# --- DICOM WSI through OpenSlide --------------------------------------------------------


def write_dicom_level(
    path: Path,
    image: np.ndarray,
    *,
    uids: dict[str, str],
    mpp: float,
    image_type: list[str],
    jpeg: bool,
    tile: int = 256,
    icc: bytes | None = None,
) -> Path:
    """One level of a DICOM WSI (VL Whole Slide Microscopy Image, TILED_FULL): `image`
    cut into `tile` px frames (edge frames padded with white), JPEG baseline (YCbCr
    4:2:2, quality 95) or uncompressed RGB; `uids` are the study, series and frame of
    reference shared by the levels."""
    import imagecodecs
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    h, w = image.shape[:2]
    frames = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            frame = np.full((tile, tile, 3), 255, np.uint8)
            block = image[y : y + tile, x : x + tile]
            frame[: block.shape[0], : block.shape[1]] = block
            if jpeg:
                frames.append(bytes(imagecodecs.jpeg8_encode(frame, level=95, subsampling="422")))
            else:
                frames.append(frame.tobytes())
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = WSI_SOP_CLASS, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality, ds.ImageType, ds.Manufacturer = "SM", image_type, "napari-srgan-sqe tests"
    ds.PatientName, ds.PatientID, ds.StudyID, ds.ContainerIdentifier = "Sample", "1", "1", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows = ds.Columns = tile
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422" if jpeg else "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * mpp / 1000, h * mpp / 1000
    ds.ImagedVolumeDepth = 0.001
    measures = Dataset()
    measures.PixelSpacing = [mpp / 1000, mpp / 1000]  # mm
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    if icc is not None:
        optical.ICCProfile = icc
    ds.OpticalPathSequence = Sequence([optical])
    ds.NumberOfOpticalPaths = 1
    ds.LossyImageCompression = "01" if jpeg else "00"
    if jpeg:
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate(frames) if jpeg else b"".join(frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def dicom_wsi(cmu_svs: Path, srgb_icc: bytes, tmp_path_factory) -> Path:
    """A two-level DICOM WSI of the sample slide's 1000 x 1300 px (h x w) at (x 400,
    y 900), 0.499 um/px: level 0 JPEG with an sRGB ICC profile, level 1 (2 x 2 mean)
    uncompressed; one file per level, as scanners write them, in one folder."""
    from pydicom.uid import generate_uid

    region = np.asarray(open_slide(cmu_svs).levels[0][900:1900, 400:1700])
    folder = tmp_path_factory.mktemp("dicom") / "slide"
    folder.mkdir()
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    write_dicom_level(
        folder / "level-0.dcm", region, uids=uids, mpp=0.499, jpeg=True, icc=srgb_icc,
        image_type=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
    )  # fmt: skip
    write_dicom_level(
        folder / "level-1.dcm", halve(region), uids=uids, mpp=0.998, jpeg=False,
        image_type=["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"],
    )  # fmt: skip
    return folder


@pytest.mark.parametrize("which", ["level-0.dcm", "level-1.dcm", "."])
def test_dicom_wsi_reads_as_openslide_does(dicom_wsi: Path, srgb_icc, which: str) -> None:
    path = dicom_wsi / which if which != "." else dicom_wsi
    slide = open_slide(path)
    assert slide.format == "dicom" and slide.path == path
    assert [lv.shape for lv in slide.levels] == [(1000, 1300, 3), (500, 650, 3)]
    assert slide.mpp == pytest.approx(0.499) and slide.downsamples == [1.0, 2.0]
    assert slide.codec == "jpeg" and "DICOM" in str(slide.coding)
    assert slide.metadata["icc_profile"] == srgb_icc
    with openslide.OpenSlide(dicom_wsi / "level-0.dcm") as reference:
        for level, (y, x, h, w) in enumerate([(200, 230, 300, 420), (100, 250, 300, 300)]):
            ours = np.asarray(slide.levels[level][y : y + h, x : x + w])
            assert np.array_equal(ours, read_region(reference, level, y, x, h, w)), level


def test_dicom_pixels_are_the_sample_slides(dicom_wsi: Path, cmu_svs: Path) -> None:
    region = np.asarray(open_slide(cmu_svs).levels[0][900:1900, 400:1700])
    slide = open_slide(dicom_wsi)
    assert psnr(np.asarray(slide.levels[0]), region) > 31  # 33 dB: JPEG 4:2:2, quality 95
    assert np.array_equal(np.asarray(slide.levels[1]), halve(region))  # uncompressed


def test_dicom_paths_are_accepted_by_the_napari_reader(dicom_wsi: Path, tmp_path: Path) -> None:
    import yaml

    from napari_srgan_sqe._napari.reader import get_reader
    from napari_srgan_sqe.io._formats import is_supported_path

    assert is_supported_path(dicom_wsi) and is_supported_path(dicom_wsi / "level-0.dcm")
    assert get_reader(str(dicom_wsi)) is not None
    assert get_reader(str(dicom_wsi / "level-0.dcm")) is not None
    assert not is_supported_path(tmp_path)  # an empty folder is not a slide
    other = tmp_path / "ct"  # DICOM, but not a slide: left to other readers
    other.mkdir()
    (other / "ct.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"1.2.840.10008.5.1.4.1.1.2\0")
    assert not is_supported_path(other) and get_reader(str(other / "ct.dcm")) is None
    manifest = yaml.safe_load((Path(__file__).parents[1] / "napari.yaml").read_text())
    patterns = manifest["contributions"]["readers"][0]["filename_patterns"]
    assert "*.dcm" in patterns


def test_broken_dicom_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.dcm"
    bad.write_text("not a DICOM file")
    with pytest.raises(SlideError, match="does not recognise this file as a DICOM whole-slide"):
        open_slide(bad)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(SlideError, match="none of its 1 DICOM files is a whole-slide image"):
        open_slide(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideError, match="not an OME-Zarr image or a DICOM slide"):
        open_slide(tmp_path / "empty")


# --- enhance: DICOM in, OME-TIFF out; pixel size; size written ---------------------------


def test_enhance_dicom_to_ome_tiff_openslide_sees_pyramid_and_profile(
    dicom_wsi: Path, model, srgb_icc, tmp_path: Path
) -> None:
    stats: dict = {}
    out = enhance_slide(
        dicom_wsi, tmp_path / "sr.ome.tif", model=model, device="cpu",
        region=(200, 300, 128, 128), tile=64, stats=stats,
    )  # fmt: skip
    with openslide.OpenSlide(out) as exported:
        assert exported.level_count == 2
        assert exported.level_dimensions == ((512, 512), (256, 256))
        assert float(exported.properties["openslide.mpp-x"]) == pytest.approx(0.499 / 4)
        assert exported.color_profile.tobytes() == srgb_icc
        via_openslide = read_region(exported, 1, 0, 0, 256, 256)
    assert np.array_equal(via_openslide, np.asarray(open_slide(out).levels[1]))
    assert stats["bytes_written"] == out.stat().st_size
    assert stats["bytes_per_pixel"] == pytest.approx(out.stat().st_size / 512**2)


def test_enhance_warns_without_pixel_size_and_takes_mpp(he_png: Path, model, tmp_path) -> None:
    kwargs = {"model": model, "device": "cpu", "region": (0, 0, 64, 64), "tile": 64}
    with pytest.warns(PixelSizeWarning, match="records no pixel size"):
        silent = enhance_slide(he_png, tmp_path / "none.ome.zarr", **kwargs)
    assert open_slide(silent).mpp is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PixelSizeWarning)
        out = enhance_slide(he_png, tmp_path / "mpp.ome.zarr", mpp=0.5, **kwargs)
        tif = enhance_slide(he_png, tmp_path / "mpp.ome.tif", mpp=0.5, **kwargs)
    assert open_slide(out).mpp == pytest.approx(0.125)
    assert open_slide(tif).mpp == pytest.approx(0.125)
    with openslide.OpenSlide(tif) as exported:
        assert float(exported.properties["openslide.mpp-x"]) == pytest.approx(0.125)
    with pytest.raises(DataError, match="positive number"):
        enhance_slide(he_png, tmp_path / "bad.ome.zarr", mpp=-1, **kwargs)
    with pytest.raises(DataError, match="OME-TIFF only"):
        enhance_slide(he_png, tmp_path / "j.ome.zarr", compression="jpeg", **kwargs)


def test_cli_enhance_jpeg_mpp_and_size(he_png: Path, model, tmp_path, capsys) -> None:
    from napari_srgan_sqe.cli import main

    model_file = save_model(model, tmp_path / "tiny.safetensors")
    base = ["enhance", str(he_png), "--model", str(model_file), "--device", "cpu"]
    base += ["--region", "0,0,128,128", "--tile", "64"]
    out = tmp_path / "cli.ome.tif"
    assert main([*base[:2], str(out), *base[2:], "--compression", "jpeg", "--quality", "80"]) == 0
    captured = capsys.readouterr()
    assert "records no pixel size" in captured.err and "--mpp" in captured.err
    assert "size: " in captured.out and "JPEG Q=80" in captured.out
    assert "bytes per pixel" in captured.out
    with openslide.OpenSlide(out) as exported:
        assert exported.level_count == 2
    with tifffile.TiffFile(out) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.JPEG
    out2 = tmp_path / "mpp.ome.zarr"
    assert main([*base[:2], str(out2), *base[2:], "--mpp", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "records no pixel size" not in captured.err
    assert "pixel size: 0.5 um/px from --mpp" in captured.out
    assert "lossless, Blosc-zstd" in captured.out
    assert open_slide(out2).mpp == pytest.approx(0.125)
    out3 = tmp_path / "j.ome.zarr"
    assert main([*base[:2], str(out3), *base[2:], "--compression", "jpeg"]) == 2
    assert "lossy compression is offered for OME-TIFF only" in capsys.readouterr().err
    assert main([*base[:2], str(out3), *base[2:], "--quality", "80"]) == 2
    assert "--quality goes with --compression jpeg" in capsys.readouterr().err
    assert main([*base[:2], str(out3), *base[2:], "--mpp", "0"]) == 2
    assert "--mpp must be" in capsys.readouterr().err
    assert not out3.exists()


def test_ome_zarr_export_is_unchanged_by_tiff_options(he_crop, tmp_path: Path) -> None:
    """The lossless OME-Zarr default stays Blosc-zstd, read back exactly."""
    out = write_ome_zarr(he_crop, tmp_path / "a.ome.zarr", **codec_options("zarr"))
    assert np.array_equal(np.asarray(open_slide(out).levels[0]), he_crop)


# --- NGFF 0.4 (zarr v2) and 0.5 (zarr v3, sharded): validated, read back ---------------


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_ome_zarr_validates_with_ome_zarr_models(he_crop, tmp_path: Path, ngff: str) -> None:
    import zarr
    from ome_zarr_models.v04 import Image as Image04
    from ome_zarr_models.v05 import Image as Image05

    origin = (1203.25, -7.5)  # y, x in um: placed as an export of a region is
    out = write_ome_zarr(
        he_crop, tmp_path / "a.ome.zarr", mpp=0.25, chunk=128, ngff=ngff, origin=origin
    )
    group = zarr.open_group(out, mode="r")
    model = (Image04 if ngff == "0.4" else Image05).from_zarr(group)
    attrs = model.attributes if ngff == "0.4" else model.attributes.ome
    multiscale = attrs.multiscales[0]
    assert [ax.name for ax in multiscale.axes] == ["c", "y", "x"]
    assert len(multiscale.datasets) == len(open_slide(out).levels) > 1
    for i, dataset in enumerate(multiscale.datasets):  # scale, then translation
        _, move = dataset.coordinateTransformations
        f = 2**i  # level i's pixel centres: (f - 1) / 2 level-0 px further in
        assert list(move.translation) == pytest.approx(
            [0.0, *(o + 0.25 * (f - 1) / 2 for o in origin)]
        )
    arr = group["0"]
    assert arr.metadata.zarr_format == (2 if ngff == "0.4" else 3)
    if ngff == "0.5":  # sharded: 4 x 4 chunks of 128 px to a 512 px shard file
        assert arr.shards == (3, 512, 512) and arr.chunks == (3, 128, 128)
        assert (out / "zarr.json").is_file() and not (out / ".zattrs").exists()
    slide = open_slide(out)
    assert slide.metadata["ngff_version"] == ngff and slide.mpp == pytest.approx(0.25)
    assert slide.origin == pytest.approx(origin)
    assert np.array_equal(np.asarray(slide.levels[0]), he_crop)
    assert np.array_equal(np.asarray(slide.levels[1]), halve(he_crop))


def test_cli_enhance_writes_ngff_05(he_png: Path, tmp_path: Path, capsys) -> None:
    from napari_srgan_sqe.cli import main

    out = tmp_path / "sr.ome.zarr"
    args = ["enhance", str(he_png), str(out), "--model", "bicubic-x4", "--region", "0,0,128,96"]
    assert main([*args, "--ngff", "0.5", "--mpp", "0.5"]) == 0
    slide = open_slide(out)
    assert slide.metadata["ngff_version"] == "0.5" and slide.mpp == pytest.approx(0.125)
    assert slide.levels[0].shape == (384, 512, 3)
    capsys.readouterr()
    tif = tmp_path / "sr.ome.tif"
    assert main(["enhance", str(he_png), str(tif), "--model", "bicubic-x4", "--ngff", "0.5"]) == 2
    assert "applies to OME-Zarr" in capsys.readouterr().err and not tif.exists()
