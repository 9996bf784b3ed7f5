"""File types the readers handle, recognised by extension; length units to micrometres.

Kept free of heavy imports: the napari reader hook uses it to decide, without
importing dask or zarr, whether a path is ours.
"""

from __future__ import annotations

from pathlib import Path

VENDOR_EXTENSIONS = frozenset({".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide"})
TIFF_EXTENSIONS = frozenset({".tif", ".tiff", ".ome.tif", ".ome.tiff"})
ZARR_EXTENSIONS = frozenset({".zarr", ".ome.zarr"})
PLAIN_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
SUPPORTED_EXTENSIONS = VENDOR_EXTENSIONS | TIFF_EXTENSIONS | ZARR_EXTENSIONS | PLAIN_EXTENSIONS

INCOMPLETE_MARKER = ".incomplete"
"""File in an OME-Zarr being written: its progress record; removed when complete."""

# Micrometres per unit, for OME-XML unit symbols and NGFF (UDUNITS-2) unit names.
UM_PER_UNIT: dict[str, float] = {
    "µm": 1.0,
    "um": 1.0,
    "\u03bcm": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "Å": 1e-4,
    "angstrom": 1e-4,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
}

# Resolution tags above this many um/px are screen or print defaults (72-300 dpi),
# not a microscope's pixel size: they are ignored.
MAX_PLAUSIBLE_MPP = 50.0


def extension(path: str | Path) -> str:
    """Lower-case extension, keeping the compound `.ome.tif(f)` / `.ome.zarr`."""
    name = Path(path).name.lower().rstrip("/")
    for compound in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.endswith(compound):
            return compound
    return Path(name).suffix


def looks_like_zarr(path: Path) -> bool:
    """A directory named *.zarr or holding zarr metadata at its top."""
    if not path.is_dir():
        return False
    if extension(path) in ZARR_EXTENSIONS:
        return True
    return any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zattrs", ".zarray"))


def is_supported_path(path: str | Path) -> bool:
    """Whether a path has a supported extension (or is a zarr directory)."""
    p = Path(path)
    if p.is_dir():
        return looks_like_zarr(p)
    return extension(p) in SUPPORTED_EXTENSIONS


def to_um(value: float, unit: str | None) -> float | None:
    """`value` in `unit` as micrometres; None for unknown units or non-positive values."""
    if unit is None or value is None:
        return None
    factor = UM_PER_UNIT.get(str(unit).strip()) or UM_PER_UNIT.get(str(unit).strip().lower())
    if factor is None or not value or float(value) <= 0:
        return None
    return float(value) * factor
