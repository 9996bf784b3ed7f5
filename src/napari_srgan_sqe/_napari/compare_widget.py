"""The "Compare" widget, by its old name: the code lives in `_napari.compare`
(`widget`, `table`, `panel`, `maps`) and the readouts in `inference.readouts`.
The npe2 manifest names `CompareWidget` here."""

from napari_srgan_sqe._napari.compare.maps import DEPARTURE_CLEAR, MAP_KEY, map_kind
from napari_srgan_sqe._napari.compare.widget import CompareWidget
from napari_srgan_sqe.inference.readouts import (
    BICUBIC_VS_HR,
    CONSISTENCY,
    SR_VS_HR,
    Readout,
    ReadoutColumn,
    compute_readouts,
)

__all__ = [
    "BICUBIC_VS_HR",
    "CONSISTENCY",
    "DEPARTURE_CLEAR",
    "MAP_KEY",
    "SR_VS_HR",
    "CompareWidget",
    "Readout",
    "ReadoutColumn",
    "compute_readouts",
    "map_kind",
]
