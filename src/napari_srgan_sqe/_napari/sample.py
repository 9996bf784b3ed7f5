"""npe2 sample data: the bundled H&E slide CMU-1-Small-Region (public domain)."""

from __future__ import annotations

from typing import Any

__all__ = ["cmu_small_region"]


def cmu_small_region() -> list[tuple[Any, dict[str, Any], str]]:
    """The bundled Aperio slide as a lazy RGB image layer at 0.499 um/px."""
    from napari_srgan_sqe._napari.reader import slide_layer_data
    from napari_srgan_sqe.io.sample import sample_slide_path
    from napari_srgan_sqe.io.slides import open_slide

    return slide_layer_data(open_slide(sample_slide_path()))
