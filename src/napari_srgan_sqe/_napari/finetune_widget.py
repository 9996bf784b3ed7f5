"""The "Fine-tune" widget's old address, kept for the npe2 manifest (`napari.yaml`) and
scripts: the widget is the package `_napari.finetune`, its jobs `training.jobs`."""

from __future__ import annotations

from napari_srgan_sqe._napari.finetune.curve import CurvePlot
from napari_srgan_sqe._napari.finetune.plans import ADAPT_MAX_SIDE, ZERO_SHOT_MAX_SIDE
from napari_srgan_sqe._napari.finetune.regions import SHAPES_NAME
from napari_srgan_sqe._napari.finetune.settings import MODES
from napari_srgan_sqe._napari.finetune.widget import OPTIMIZER_IMPORTS, FinetuneWidget, _set_busy
from napari_srgan_sqe.training.jobs import (
    Failed,
    finetune_job,
    models_dir,
    training_degradation,
    version_path,
)
from napari_srgan_sqe.training.jobs import Saved as Switched

__all__ = [
    "ADAPT_MAX_SIDE",
    "MODES",
    "OPTIMIZER_IMPORTS",
    "SHAPES_NAME",
    "ZERO_SHOT_MAX_SIDE",
    "CurvePlot",
    "Failed",
    "FinetuneWidget",
    "Switched",
    "_set_busy",
    "finetune_job",
    "models_dir",
    "training_degradation",
    "version_path",
]
