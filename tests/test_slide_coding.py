"""`Slide.coding`: how each reader tells a file's pixel coding (JPEG, JPEG 2000, lossless),
cheaply and never failing an open; and the default model chosen from it.

Uses only the bundled sample and files written here, so it runs without ../shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_srgan_sqe.inference.export import default_model_for
from napari_srgan_sqe.io import slides
from napari_srgan_sqe.io.codecs import SlideCoding
from napari_srgan_sqe.io.slides import Slide, open_slide
from napari_srgan_sqe.models.registry import CLEAN_MODEL, DEFAULT_MODEL

SAMPLE = Path(__file__).resolve().parents[1] / "src/napari_srgan_sqe/data/CMU-1-Small-Region.svs"
TCGA = Path(__file__).resolve().parents[2] / "shared/data/slides/tcga-cr-7395-01a-01-ts1.svs"
APERIO_J2K = "Aperio Image Library v11.0.37\r\n256x256 (128x128) J2K/KDU Q=70|AppMag = 20"


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    """A 256 x 256 RGB crop of the bundled sample (real H&E, uint8)."""
    return np.asarray(open_slide(SAMPLE).levels[0][1000:1256, 800:1056])


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every raw read the coding detection makes."""
    sizes: list[int] = []
    real = slides.read_bytes

    def counting(path: Path, offset: int, size: int) -> bytes:
        data = real(path, offset, size)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(slides, "read_bytes", counting)
    import napari_srgan_sqe.io._tiff_reader as tiff_reader

    monkeypatch.setattr(tiff_reader, "read_bytes", counting)
    return sizes


def test_default_is_unknown() -> None:
    slide = Slide([np.zeros((4, 4, 3), np.uint8)], None, [1.0], Path("x.png"), "png")
    assert slide.coding == SlideCoding() and slide.codec == "unknown" and slide.quality is None


def test_bundled_svs_is_jpeg_q30() -> None:
    slide = open_slide(SAMPLE)
    assert (slide.codec, slide.quality) == ("jpeg", 30)
    assert slide.coding.lossy
    assert str(slide.coding) == "JPEG Q=30 (quantisation tables)"
    assert default_model_for(slide.coding)[0] == DEFAULT_MODEL


def test_tcga_svs_is_jpeg2000_q70(aperio_j2k_svs: Path) -> None:
    """The TCGA slide of ../shared/data where it exists; elsewhere the Aperio JPEG 2000
    SVS made in the same layout from the bundled sample (conftest)."""
    slide = open_slide(TCGA if TCGA.is_file() else aperio_j2k_svs)
    assert (slide.codec, slide.quality) == ("jpeg2000", 70)
    assert default_model_for(slide.coding)[0] == DEFAULT_MODEL


def test_aperio_jpeg2000_tiff(tissue: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "j2k.tif"
    tifffile.imwrite(
        path,
        tissue,
        tile=(128, 128),
        compression="jpeg2000",
        photometric="rgb",
        description=APERIO_J2K,
    )
    slide = open_slide(path)
    assert (slide.codec, slide.quality) == ("jpeg2000", 70)
    assert str(slide.coding) == "JPEG 2000 Q=70 (Aperio Q)"
    assert slide.levels[0].shape == tissue.shape  # still readable


def test_jpeg_tiled_tiff_quality_from_first_tile(
    tissue: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(
        path,
        tissue,
        tile=(128, 128),
        compression="jpeg",
        compressionargs={"level": 75},
        photometric="rgb",
    )
    sizes = _count_reads(monkeypatch)
    slide = open_slide(path)
    assert (slide.codec, slide.quality) == ("jpeg", 75)
    assert len(sizes) == 1 and sizes[0] <= slides.HEAD_BYTES  # one tile's head, no decoding


@pytest.mark.parametrize(("compression", "detail"), [("zlib", "deflate"), ("lzw", "LZW")])
def test_lossless_tiled_tiff(compression, detail, tissue: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "lossless.tif"
    tifffile.imwrite(path, tissue, tile=(128, 128), compression=compression, photometric="rgb")
    slide = open_slide(path)
    assert slide.coding == SlideCoding("none", None, detail)
    assert not slide.coding.lossy
    assert default_model_for(slide.coding)[0] == CLEAN_MODEL


@pytest.mark.parametrize("lossless", [False, True])
def test_webp_tiled_tiff_lossy_or_lossless_from_the_tile(
    lossless: bool, tissue: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WebP tiles (vips and tifffile write them) may be lossy or lossless; the first
    tile's chunk type says which, and picks the model."""
    path = tmp_path / "webp.tif"
    args = {"level": 70, "lossless": lossless}
    tifffile.imwrite(path, tissue, tile=(128, 128), compression="webp", compressionargs=args)
    sizes = _count_reads(monkeypatch)
    slide = open_slide(path)
    if lossless:
        assert slide.coding == SlideCoding("none", None, "WebP lossless")
        assert default_model_for(slide.coding)[0] == CLEAN_MODEL
    else:
        assert (slide.codec, slide.coding.lossy, str(slide.coding)) == ("webp", True, "WebP")
        assert default_model_for(slide.coding) == (
            DEFAULT_MODEL,
            "the input is stored as WebP, lossy: the model for scanned slides",
        )
    assert len(sizes) == 1 and sizes[0] <= slides.HEAD_BYTES  # one tile's head


def test_webp_lossless_reads_the_chunk_type() -> None:
    from napari_srgan_sqe.io.codecs import webp_lossless

    head = b"RIFF\x00\x00\x00\x00WEBP"
    assert webp_lossless(head + b"VP8L\x04\x00\x00\x00abcd") is True
    assert webp_lossless(head + b"VP8 \x04\x00\x00\x00abcd") is False
    # extended format: VP8X and ALPH chunks come first (odd sizes are padded)
    ext = head + b"VP8X\x0a\x00\x00\x00" + bytes(10) + b"ALPH\x03\x00\x00\x00abc\x00"
    assert webp_lossless(ext + b"VP8 \x02\x00\x00\x00ab") is False
    assert webp_lossless(b"\xff\xd8\xff\xdb" + bytes(20)) is None  # a JPEG stream
    assert webp_lossless(head + b"VP8X\x0a\x00") is None  # cut short


def test_png_is_lossless(tissue: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    Image.fromarray(tissue).save(path)
    slide = open_slide(path)
    assert (slide.codec, slide.quality) == ("none", None)
    assert default_model_for(slide.coding)[0] == CLEAN_MODEL


def test_jpeg_file_quality_60(tissue: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "img.jpg"
    Image.fromarray(tissue).save(path, quality=60)
    slide = open_slide(path)
    assert (slide.codec, slide.quality) == ("jpeg", 60)


def test_own_ome_zarr_is_lossless(tissue: np.ndarray, tmp_path: Path) -> None:
    from napari_srgan_sqe.io.pyramid import write_ome_zarr

    path = write_ome_zarr(tissue, tmp_path / "out.ome.zarr", chunk=128)
    slide = open_slide(path)
    assert slide.codec == "none" and "Blosc" in slide.coding.detail
    assert default_model_for(slide.coding)[0] == CLEAN_MODEL


def _ome_zarr_coded_with(codec: object, tissue: np.ndarray, path: Path) -> Path:
    """A one-level OME-Zarr (v2, y x c) of `tissue` whose chunks `codec` compresses."""
    import zarr
    from imagecodecs.numcodecs import register_codecs

    register_codecs()
    group = zarr.open_group(path, mode="w", zarr_format=2)
    group.create_array("0", data=tissue, chunks=(128, 128, 3), compressors=codec)
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    axes.append({"name": "c", "type": "channel"})
    scale = [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]
    ms = {"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": scale}]}  # fmt: skip
    group.attrs.update({"multiscales": [ms]})
    return path


def test_ome_zarr_with_jpeg_codec(tissue: np.ndarray, tmp_path: Path) -> None:
    from imagecodecs.numcodecs import Jpeg

    path = _ome_zarr_coded_with(Jpeg(level=80), tissue, tmp_path / "jpeg.ome.zarr")
    slide = open_slide(path)
    assert (slide.codec, slide.quality) == ("jpeg", 80)


@pytest.mark.parametrize("lossless", [False, True])
def test_ome_zarr_with_webp_codec(lossless: bool, tissue: np.ndarray, tmp_path: Path) -> None:
    from imagecodecs.numcodecs import Webp

    codec = Webp(level=75, lossless=lossless)
    slide = open_slide(_ome_zarr_coded_with(codec, tissue, tmp_path / "webp.ome.zarr"))
    expected = ("none", None) if lossless else ("webp", 75)
    assert (slide.codec, slide.quality) == expected
    assert default_model_for(slide.coding)[0] == (CLEAN_MODEL if lossless else DEFAULT_MODEL)


def test_coding_failure_is_unknown_not_an_error(
    tissue: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import napari_srgan_sqe.io._tiff_reader as tiff_reader

    def broken(*args, **kwargs):
        raise RuntimeError("cannot tell")

    monkeypatch.setattr(tiff_reader, "page_coding", broken)  # both readers use it
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, tissue, compression="zlib")
    assert open_slide(path).coding == SlideCoding()
    svs = open_slide(SAMPLE)  # Aperio: OpenSlide opens it, the coding is unknown
    assert svs.coding == SlideCoding() and svs.levels[0].shape == (2967, 2220, 3)
    assert default_model_for(svs.coding)[0] == DEFAULT_MODEL
