"""The bundled sample slide (CMU-1-Small-Region.svs, public domain, from OpenSlide's test data)."""

from __future__ import annotations

import errno
from importlib import resources
from pathlib import Path

__all__ = ["SAMPLE_NAME", "sample_slide_path"]

SAMPLE_NAME = "CMU-1-Small-Region.svs"


def sample_slide_path() -> Path:
    """Path of the bundled H&E sample slide (Aperio SVS, 2220 x 2967, 0.499 um/px)."""
    path = Path(str(resources.files("napari_srgan_sqe") / "data" / SAMPLE_NAME))
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "the bundled sample slide is missing", str(path))
    return path
