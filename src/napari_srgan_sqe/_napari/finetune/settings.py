"""The Fine-tune widget's settings form (mode, steps, time limit, learning rate, loss,
layers, validation part) and the typed settings it gives each job: a `FinetuneConfig`,
the zero-shot recipe's, or `AdaptSettings`. Validation is the library's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtGui import QStandardItemModel
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QSpinBox, QWidget

if TYPE_CHECKING:
    from napari_srgan_sqe.config import FinetuneConfig
    from napari_srgan_sqe.training.adapt import AdaptSettings

__all__ = ["MODES", "SettingsForm"]

MODES = ("paired", "self-supervised")


class SettingsForm:
    """The settings' boxes in a `QFormLayout` (`form`), read when a job starts."""

    def __init__(self) -> None:
        from napari_srgan_sqe.training.finetune import LOSS_PRESETS

        self._had_hr = False  # an HR layer was there at the last refresh
        self._mode_chosen = False  # the user picked a mode: never switch it for them
        self.mode_box = QComboBox()
        self.mode_box.addItems(MODES)
        self.steps_box = QSpinBox()
        self.steps_box.setRange(1, 100_000)
        self.steps_box.setValue(200)
        self.lr_box = QDoubleSpinBox()
        self.lr_box.setDecimals(6)
        self.lr_box.setRange(1e-6, 1e-1)
        self.lr_box.setSingleStep(1e-5)
        self.lr_box.setValue(5e-5)
        self.loss_box = QComboBox()
        self.loss_box.addItems(LOSS_PRESETS)
        self.loss_box.setToolTip("Loss weights of the paper's variants, without the GAN term")
        self.layers_box = QComboBox()
        self.layers_box.addItems(("all", "last"))
        self.layers_box.setToolTip("'last': only the layers after the residual trunk")
        self.val_box = QDoubleSpinBox()
        self.val_box.setRange(0.05, 0.5)
        self.val_box.setSingleStep(0.05)
        self.val_box.setValue(0.25)
        self.val_box.setToolTip("Right-hand stripe of each region held out for validation")
        self.minutes_box = QDoubleSpinBox()
        self.minutes_box.setRange(0.0, 24 * 60.0)
        self.minutes_box.setSpecialValueText("none")
        self.minutes_box.setSuffix(" min")
        self.minutes_box.setToolTip("Stop after this time even if steps remain (best state kept)")

        self.form = QFormLayout()
        self.form.addRow("Mode", self.mode_box)
        self.form.addRow("Steps", self.steps_box)
        self.form.addRow("Time limit", self.minutes_box)
        self.form.addRow("Learning rate", self.lr_box)
        self.form.addRow("Loss preset", self.loss_box)
        self.form.addRow("Layers", self.layers_box)
        self.form.addRow("Validation part", self.val_box)
        self.mode_box.activated.connect(self._on_mode_chosen)  # user actions only

    def set_enabled(self, enabled: bool) -> None:
        """Grey the boxes out while a run goes (its settings are read at the start)."""
        boxes: list[QWidget] = [self.mode_box, self.steps_box, self.minutes_box, self.lr_box]
        for w in [*boxes, self.loss_box, self.layers_box, self.val_box]:
            w.setEnabled(enabled)

    def _on_mode_chosen(self, _index: int = 0) -> None:
        self._mode_chosen = True

    def follow_hr(self, has_hr: bool) -> None:
        """Paired mode needs an HR layer: offered only with one, and picked when one
        first appears unless the user chose a mode."""
        model = self.mode_box.model()
        assert isinstance(model, QStandardItemModel)  # a QComboBox's own model
        item = model.item(0)
        assert item is not None
        item.setEnabled(has_hr)
        item.setToolTip("" if has_hr else "needs an HR layer (Enhance with 'simulate LR')")
        if not has_hr and self.mode_box.currentIndex() == 0:
            self.mode_box.setCurrentIndex(1)
        elif has_hr and not self._had_hr and not self._mode_chosen:
            self.mode_box.setCurrentIndex(0)  # an HR layer just appeared: paired is better
        self._had_hr = has_hr

    @property
    def mode(self) -> str:
        return self.mode_box.currentText()

    @property
    def max_minutes(self) -> float | None:
        """The time limit (None: no limit)."""
        return self.minutes_box.value() or None

    def finetune_config(self, degradation: str, extra: dict[str, Any]) -> FinetuneConfig:
        """The FinetuneConfig of the form (`extra`: fields not in it); ConfigError."""
        from napari_srgan_sqe.training.jobs import finetune_config

        fields = {
            "mode": self.mode,
            "steps": self.steps_box.value(),
            "lr": self.lr_box.value(),
            "train_layers": self.layers_box.currentText(),
            "val_fraction": self.val_box.value(),
            "max_minutes": self.max_minutes,
            "degradation": degradation,
        }
        return finetune_config(
            self.loss_box.currentText(), source="the Fine-tune settings", **{**fields, **extra}
        )

    def zero_shot_config(self, degradation: str, seed: int) -> FinetuneConfig:
        """The zero-shot recipe for the form's steps and time limit; ConfigError."""
        from napari_srgan_sqe.training.zero_shot import zero_shot_config

        return zero_shot_config(
            self.steps_box.value(),
            degradation=degradation,
            max_minutes=self.max_minutes,
            seed=seed,
        )

    def adapt_settings(self, seed: int, extra: dict[str, Any]) -> AdaptSettings:
        """The AdaptSettings for the form's steps and time limit (`extra`: fields not in
        the form); TypeError for a field it does not have."""
        from napari_srgan_sqe.training.adapt import AdaptSettings

        fields = {"steps": self.steps_box.value(), "max_minutes": self.max_minutes, "seed": seed}
        return AdaptSettings(**{**fields, **extra})
