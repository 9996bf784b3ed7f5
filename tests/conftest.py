"""Fixtures shared by all tests: real H&E test data, none of it copied into the repository.

Every test runs on a fresh clone, without ../shared/data (only `shared_data` looks for
it, for optional extra checks; SRGAN_SQE_NO_SHARED=1 hides it). ../shared/data's README
forbids copying its files into the repository, except the CC0 sample slide bundled in
the package, so every test image is made from that slide (CMU-1-Small-Region.svs: skin,
20x, 0.499 um/px, JPEG tiles) once per session, in a temporary folder:

- `he_dir`: three tissue-rich, disjoint regions of the sample slide as PNG files,
  `train-1.png` (1000 x 1000 px; also `he_png` and, as an array, `he_crop`),
  `train-2.png` (512 x 512) and `val-1.png` (640 x 640): see `HE_REGIONS`. The names
  give each image's role in the folder's own small split (`he_split`); tests that need
  two training images take the two `train-*`, tests that need an image kept out of
  training take `val-1.png`;
- `cmu_svs`: the sample slide itself;
- `aperio_j2k_svs`: an Aperio SVS with JPEG 2000 tiles and two levels, written from the
  sample slide's pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_SVS = REPO / "src" / "napari_srgan_sqe" / "data" / "CMU-1-Small-Region.svs"

HE_REGIONS = {
    "train-1.png": (750, 1950, 1000),
    "train-2.png": (850, 1425, 512),
    "val-1.png": (950, 650, 640),
}
"""The `he_dir` images: file name -> (x, y, size) of a square region of the sample slide's
level 0. Chosen for tissue (at least 82 % of each region's pixels have HSV saturation
above 40 of 255; mean saturation 96 to 106) and disjoint, so that `val-1.png` shares no
pixel with the training images."""
HE_SPLIT = {"train": ["train-1.png", "train-2.png"], "val": ["val-1.png"]}

APERIO_J2K = "Aperio Image Library v11.0.37\r\n{w}x{h} (256x256) J2K/KDU Q=70|AppMag = 20"
"""Level 0's ImageDescription, as Aperio writes it for JPEG 2000 (no MPP: no pixel size)."""
APERIO_J2K_LEVEL = "Aperio Image Library v11.0.37\r\n{w}x{h} (256x256) -> {w1}x{h1} J2K/KDU Q=70"


@pytest.fixture
def one_torch_thread():
    """Torch on one thread during the test, its thread count restored after. Modules
    that train or run models use it for every test:
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path | None:
    """The shared data folder (../shared/data) where present, else None. Only for extra
    checks against the whole data set: no test may skip or fail without it. Set the
    environment variable SRGAN_SQE_NO_SHARED=1 to run as on a fresh clone (None)."""
    if os.environ.get("SRGAN_SQE_NO_SHARED") == "1" or not SHARED_DATA.is_dir():
        return None
    return SHARED_DATA


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    """CMU-1-Small-Region.svs: Aperio, one level 2220 x 2967, JPEG, 0.499 um/px."""
    return SAMPLE_SVS


def _aperio_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr of an RGB uint8 image, as Aperio's compression 33003 holds
    it (OpenSlide converts it back to RGB)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    ycc = np.stack(
        [
            0.299 * r + 0.587 * g + 0.114 * b,
            128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
            128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
        ],
        axis=-1,
    )
    return np.clip(np.rint(ycc), 0, 255).astype(np.uint8)


def write_aperio_j2k_svs(path: Path, level0: np.ndarray) -> Path:
    """Write `level0` (y, x, 3) uint8 as a two-level Aperio SVS like a TCGA JPEG 2000 slide:
    256 px tiles of JPEG 2000 codestreams in YCbCr (TIFF compression 33003), "J2K/KDU
    Q=70" in the ImageDescription, no pixel size; level 1 is the 2 x 2 mean, its size
    rounded down (an odd size makes a downsample just above 2, as in real slides)."""
    import imagecodecs
    import tifffile

    h, w = level0.shape[0] // 2 * 2, level0.shape[1] // 2 * 2
    quads = [level0[dy:h:2, dx:w:2].astype(np.uint16) for dy in (0, 1) for dx in (0, 1)]
    level1 = ((sum(quads) + 2) // 4).astype(np.uint8)
    (h0, w0), (h1, w1) = level0.shape[:2], level1.shape[:2]
    j2k = {"level": 40, "codecformat": imagecodecs.JPEG2K.CODEC.J2K, "mct": False}
    with tifffile.TiffWriter(path) as tif:
        for level, description in ((level0, APERIO_J2K), (level1, APERIO_J2K_LEVEL)):
            tif.write(
                _aperio_ycbcr(level),
                tile=(256, 256),
                photometric="rgb",
                compression=33003,  # Aperio JPEG 2000, YCbCr
                compressionargs=j2k,
                description=description.format(w=w0, h=h0, w1=w1, h1=h1),
                metadata=None,
            )
    return path


@pytest.fixture(scope="session")
def aperio_j2k_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-level Aperio SVS with JPEG 2000 tiles and no pixel size, opened by OpenSlide:
    levels 2219 x 1203 and 1109 x 601 (width x height), downsample 2.0013. Its pixels are
    the bundled sample slide's, transposed (x, y swapped) to lay its tissue across the
    width: level-0 row y, column x is the sample's row 175 + x, column 100 + y."""
    from napari_srgan_sqe.io.slides import open_slide

    sample = np.asarray(open_slide(SAMPLE_SVS).levels[0][175:2394, 100:1303])
    path = tmp_path_factory.mktemp("slides") / "aperio-j2k.svs"
    return write_aperio_j2k_svs(path, np.ascontiguousarray(sample.transpose(1, 0, 2)))


@pytest.fixture(scope="session")
def he_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of real H&E images (PNG, RGB, 8 bits, 20x) cut from the sample slide:
    `HE_REGIONS`. Made once per session; tests must not write into it."""
    import openslide

    out = tmp_path_factory.mktemp("he")
    with openslide.OpenSlide(SAMPLE_SVS) as slide:
        for name, (x, y, size) in HE_REGIONS.items():
            im = slide.read_region((x, y), 0, (size, size)).convert("RGB")
            saturation = np.asarray(im.convert("HSV"))[..., 1]
            assert saturation.mean() > 80, f"{name}: too little tissue at ({x}, {y})"
            im.save(out / name)
    return out


@pytest.fixture(scope="session")
def he_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split file for `he_dir` (the format of experiments/monuseg_split.json): two
    training images, one validation image. In a folder of its own, not among the images."""
    path = tmp_path_factory.mktemp("split") / "he-split.json"
    path.write_text(json.dumps(HE_SPLIT, indent=2))
    return path


@pytest.fixture(scope="session")
def he_png(he_dir: Path) -> Path:
    """The 1000 x 1000 H&E image of `he_dir` (PNG)."""
    return he_dir / "train-1.png"


@pytest.fixture(scope="session")
def he_crop(he_png: Path) -> np.ndarray:
    """`he_png` as a (1000, 1000, 3) uint8 array; 1000 px gives the chunk counts the
    pyramid tests expect."""
    from PIL import Image

    with Image.open(he_png) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def crops(he_dir: Path, tmp_path: Path) -> Path:
    """160 x 160 crops of the two training images of `he_dir` (real H&E), as PNG files,
    for tiny training runs (tests/tiny_runs.py)."""
    from PIL import Image

    out = tmp_path / "hr"
    out.mkdir()
    for name in ("train-1.png", "train-2.png"):
        with Image.open(he_dir / name) as im:
            im.convert("RGB").crop((300, 300, 460, 460)).save(out / name)
    return out
