"""What the Enhance widget says: the status line of an SR pyramid, how a layer is
stored, an SR layer's name; and the layer tags it reads (simulated by which preset,
busy with a fine-tune)."""

from __future__ import annotations

from typing import Any

from napari_srgan_sqe._napari import _layers
from napari_srgan_sqe.inference.enhancement import layer_coding

__all__ = [
    "CODING_TIP",
    "coding_text",
    "is_busy",
    "pyramid_status",
    "simulated_by",
    "sr_name",
    "stored_as",
]

CODING_TIP = (
    "How the file stores the pixels (read from its metadata): lossy JPEG / "
    "JPEG 2000 slides get the model trained on scanner degradation by default, "
    "losslessly stored ones the model trained on clean LR"
)
"""The tooltip of "Stored as: ..."."""


def simulated_by(layer: Any) -> str | None:
    """The preset a simulated LR layer was made with (None for other layers)."""
    tag = getattr(layer, "metadata", {}).get(_layers.META_KEY)
    if not isinstance(tag, dict) or tag.get("role") != "lr":
        return None
    return tag.get("degradation")


def is_busy(sr_layer: Any) -> bool:
    """True while the Fine-tune widget trains on this SR layer (its tag says "busy")."""
    tag = getattr(sr_layer, "metadata", {}).get(_layers.META_KEY)
    return isinstance(tag, dict) and bool(tag.get("busy"))


def coding_text(layer: Any) -> str:
    """'JPEG Q=30 (quantisation tables) — lossy', 'lossless (LZW)', 'simulated LR
    (scanner)' or 'unknown' for a layer."""
    preset = simulated_by(layer)
    if preset is not None:
        return f"simulated LR ({'clean D_s' if preset == 'clean' else preset})"
    coding = layer_coding(layer)
    if coding.codec == "unknown":
        return "unknown" + (f" ({coding.detail})" if coding.detail else " (not read from a file)")
    return f"{coding} — lossy" if coding.lossy else str(coding)


def stored_as(layer: Any) -> str:
    """'Stored as: <coding_text>', with a slide's pixel size when its reader read one."""
    if layer is None:
        return "Stored as: -"
    size = ""
    if isinstance(layer.metadata, dict) and "mpp" in layer.metadata:  # a slide's
        mpp = layer.metadata["mpp"]
        size = (
            f"; {float(mpp):.3g} um/px"
            if mpp
            else "; pixel size not recorded (no scale bar, sizes in pixels)"
        )
    return f"Stored as: {coding_text(layer)}{size}"


def sr_name(sr: Any) -> str:
    """'SR <model> · <slide>': role and model first (napari elides names in the middle);
    a stochastic model's sample is named by its seed ('SR sr3-he-x4 seed 3 · ...')."""
    pyramid = _layers.pyramid_of(sr)
    detail = pyramid.model.name
    if pyramid.model.descriptor.stochastic:
        detail += f" seed {pyramid.seed}"
    return _layers.role_name("sr", _layers.slide_name(sr), detail)


def pyramid_status(pyramid: Any) -> str:
    """The status line of an SR pyramid: device, model, tiles computed / pending /
    from the cache, speed."""
    st = pyramid.stats
    rate = f"{st.mean_tile_s:.2f} s/tile, {st.mpx_per_s:.1f} Mpx/s" if st.tiles_computed else "-"
    return (
        f"{pyramid.predictor.device_name} | {pyramid.model.name} | tiles: "
        f"{st.tiles_computed} computed, {st.pending} pending, "
        f"{st.cache_hits} cache hits | {rate}"
    )
