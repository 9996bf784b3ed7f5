"""File types the readers handle, recognised by extension; length units to micrometres.

Kept free of heavy imports: the napari reader hook uses it to decide, without
importing dask or zarr, whether a path is ours.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

VENDOR_EXTENSIONS = frozenset(
    {".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide", ".dcm"}
)
"""Read through OpenSlide; `.dcm` is DICOM WSI (a folder of DICOM files is one too)."""
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


DICOM_SCAN_LIMIT = 64
"""Files of a folder looked at (names, then the 132-byte DICOM preamble) to tell whether
it holds DICOM files: the napari reader asks for every folder dropped on it."""


DICOM_WSI_SOP_CLASS = b"1.2.840.10008.5.1.4.1.1.77.1.6"
"""VL Whole Slide Microscopy Image Storage: the SOP class of every DICOM WSI level."""


def _head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _is_dicom(head: bytes) -> bool:
    return head[128:132] == b"DICM"


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: "DICM" after the 128-byte preamble (any extension)."""
    return _is_dicom(_head(path, 132))


def is_dicom_wsi_file(path: Path) -> bool:
    """A DICOM file whose file meta information (at its start) names the WSI SOP class."""
    head = _head(path, 4096)
    return _is_dicom(head) and DICOM_WSI_SOP_CLASS in head


def dicom_files(folder: Path, *, limit: int | None = None) -> list[Path]:
    """The DICOM files directly in `folder` (not in subfolders), sorted by name; at most
    `limit` entries are looked at."""
    found = []
    try:
        entries = sorted(itertools.islice(folder.iterdir(), limit))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.suffix.lower() == ".dcm" or is_dicom_file(entry):
            found.append(entry)
    return found


def looks_like_dicom_folder(path: Path) -> bool:
    """A directory with DICOM WSI files directly in it (one file per level)."""
    if not path.is_dir():
        return False
    return any(is_dicom_wsi_file(f) for f in dicom_files(path, limit=DICOM_SCAN_LIMIT))


def is_supported_path(path: str | Path) -> bool:
    """Whether a path has a supported extension (or is a zarr or DICOM WSI directory).

    A `.dcm` file that is DICOM but not a whole-slide image (CT, MR ...) is declined,
    so that another napari reader can take it; one that is not DICOM at all is taken
    (and then refused with a message saying so).
    """
    p = Path(path)
    if p.is_dir():
        return looks_like_zarr(p) or looks_like_dicom_folder(p)
    ext = extension(p)
    if ext == ".dcm":
        head = _head(p, 4096)  # read once: is it DICOM, and a WSI
        if _is_dicom(head):
            return DICOM_WSI_SOP_CLASS in head
    return ext in SUPPORTED_EXTENSIONS


def to_um(value: float, unit: str | None) -> float | None:
    """`value` in `unit` as micrometres; None for unknown units or non-positive values."""
    if unit is None or value is None:
        return None
    factor = UM_PER_UNIT.get(str(unit).strip()) or UM_PER_UNIT.get(str(unit).strip().lower())
    if factor is None or not value or float(value) <= 0:
        return None
    return float(value) * factor


def position_to_um(value: float, unit: str | None) -> float | None:
    """A position `value` in the length `unit` as micrometres (any sign, unlike a pixel
    size: `to_um`); None for an unknown unit or a value that is not a finite number."""
    if unit is None or value is None:
        return None
    factor = UM_PER_UNIT.get(str(unit).strip()) or UM_PER_UNIT.get(str(unit).strip().lower())
    try:
        um = float(value) * factor if factor else None
    except (TypeError, ValueError):
        return None
    return um if um is not None and math.isfinite(um) else None


def metadata_text(text: str) -> str:
    """`text` as valid Unicode for a file's metadata (OME-XML, zarr attributes). A file
    name that is not valid UTF-8 reaches Python with its bad bytes as lone surrogates
    (b"\\xff" -> "\\udcff"), which no UTF-8 writer accepts; those bytes are written as
    "\\xff" escapes, every other character as it is."""
    return os.fsencode(text).decode("utf-8", "backslashreplace") if text else text
