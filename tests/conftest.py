"""Fixtures shared by all tests: the real data in ../shared/data and small crops of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_SVS = REPO / "src" / "napari_srgan_sqe" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared H&E data folder (../shared/data next to the repository)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data folder {SHARED_DATA} is absent (it is not shipped with the package)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def cmu_svs(shared_data: Path) -> Path:
    """CMU-1-Small-Region.svs: Aperio, one level 2220 x 2967, JPEG, 0.499 um/px."""
    return shared_data / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def tcga_svs(shared_data: Path) -> Path:
    """A two-level Aperio SVS with JPEG 2000 tiles and no pixel size."""
    return shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"


@pytest.fixture(scope="session")
def monuseg_png(shared_data: Path) -> Path:
    """One 1000 x 1000 RGB MoNuSeg training image (PNG)."""
    return shared_data / "monuseg_train" / "TCGA-18-5592-01Z-00-DX1.png"


@pytest.fixture(scope="session")
def he_crop(monuseg_png: Path) -> np.ndarray:
    """The MoNuSeg image as a (1000, 1000, 3) uint8 array."""
    from PIL import Image

    with Image.open(monuseg_png) as im:
        return np.asarray(im.convert("RGB"))
