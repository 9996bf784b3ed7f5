"""The Enhance form: image layer, how it is stored, "Simulate LR", Model, Device, Tile,
Seed; and the model list, whose default follows the LR until a model is picked by hand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QStandardItemModel
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QSpinBox

from napari_srgan_sqe._napari.enhance.status import CODING_TIP, simulated_by, stored_as
from napari_srgan_sqe.inference.enhancement import default_model_name, is_model_path, layer_coding
from napari_srgan_sqe.inference.tiling import TILE_RANGE

__all__ = ["DEFAULT_ITEM", "DEVICES", "LOAD_FILE", "SIMULATE_CHOICES", "EnhanceForm"]

LOAD_FILE = "load .safetensors..."
DEFAULT_ITEM = "default"
DEVICES = ("auto", "cuda", "mps", "cpu")
SIMULATE_CHOICES = (
    ("off", None, "super-resolve the layer itself (it is the LR)"),
    ("clean (D_s)", "clean", "this layer is the HR: LR = the reference degradation D_s"),
    ("scanner", "scanner", "this layer is the HR: LR = blur, noise and JPEG / JPEG 2000 coding"),
)
"""The "Simulate LR" choices: text, degradation preset (None: off), tooltip."""


class EnhanceForm:
    """The form's boxes in a `QFormLayout` (`layout`), and the model list's state.

    `models`: the bundled models once the probe listed them (None before);
    `by_hand`: a model picked by the user, never replaced by a default; `index`: the
    Model box's index last acted on (to go back to when a choice is refused).
    """

    def __init__(self) -> None:
        self.models: list[dict] | None = None
        self.by_hand = False

        self.layer_box = QComboBox()
        self.coding_label = QLabel()
        self.coding_label.setWordWrap(True)
        self.simulate_box = QComboBox()
        for text, preset, tip in SIMULATE_CHOICES:
            self.simulate_box.addItem(text, preset)
            self.simulate_box.setItemData(
                self.simulate_box.count() - 1, tip, Qt.ItemDataRole.ToolTipRole
            )
        self.simulate_box.setToolTip(
            "Treat the layer as HR and super-resolve LR simulated from it (so quality can "
            "be measured against it): clean = the reference D_s, scanner = blur, noise "
            "and JPEG / JPEG 2000 coding as in a scanner's file"
        )
        self.model_box = QComboBox()
        self.device_box = QComboBox()
        self.device_box.addItems(DEVICES)
        self.tile_box = QSpinBox()
        self.tile_box.setRange(
            0, TILE_RANGE[1]
        )  # 0: "auto"; below TILE_RANGE[0] the engine says why not
        self.tile_box.setSingleStep(64)
        self.tile_box.setSpecialValueText("auto")
        self.tile_box.setSuffix(" LR px")
        self.tile_box.setToolTip("Tile side; auto = 256 on CPU, 512 on a GPU")
        self.seed_box = QSpinBox()
        self.seed_box.setRange(0, 2**31 - 1)
        self.seed_box.setToolTip(
            "Which sample a stochastic model (e.g. SR3) draws: each seed gives another "
            "plausible image, the same seed the same image; it is shown in the SR layer's "
            "name. Deterministic models ignore it."
        )

        self.layout = QFormLayout()
        self.layout.addRow("Image layer", self.layer_box)
        self.layout.addRow(self.coding_label)
        self.layout.addRow("Simulate LR", self.simulate_box)
        self.layout.addRow("Model", self.model_box)
        self.layout.addRow("Device", self.device_box)
        self.layout.addRow("Tile", self.tile_box)
        self.layout.addRow("Seed", self.seed_box)

        self.model_box.addItem(DEFAULT_ITEM, None)  # until the worker lists the models
        self.model_box.addItem(LOAD_FILE, LOAD_FILE)
        self.index = self.model_box.currentIndex()

    # ---------------------------------------------------------------- values
    @property
    def simulate_preset(self) -> str | None:
        """The "Simulate LR" choice: 'clean', 'scanner', or None (off)."""
        return self.simulate_box.currentData()

    def set_simulate(self, preset: str | None) -> None:
        """Choose "Simulate LR": None (off), 'clean' or 'scanner'."""
        found = [
            i for i in range(self.simulate_box.count()) if self.simulate_box.itemData(i) == preset
        ]
        if not found:
            known = ", ".join(repr(p) for _, p, _ in SIMULATE_CHOICES)
            raise ValueError(f"unknown degradation preset {preset!r}; choose one of {known}")
        self.simulate_box.setCurrentIndex(found[0])

    @property
    def device(self) -> str:
        """The Device box's choice ('auto', not 'auto (cpu)')."""
        return self.device_box.currentText().split(" ")[0]

    @property
    def tile(self) -> int | None:
        """The tile side in LR px; None: auto."""
        return self.tile_box.value() or None

    def set_auto_device(self, name: str) -> None:
        """Show the device 'auto' stands for."""
        self.device_box.setItemText(0, f"auto ({name})")

    def show_layer(self, layer: Any) -> None:
        """Show how the chosen layer (None: none) is stored."""
        self.coding_label.setText(stored_as(layer))
        self.coding_label.setToolTip("" if layer is None else CODING_TIP)

    # ---------------------------------------------------------------- models
    def auto_model(self, layer: Any, preset: str | None) -> str:
        """The default model for LR simulated by `preset`, or (None) for `layer` itself."""
        if preset is None and simulated_by(layer) is not None:
            preset = simulated_by(layer)  # enhancing a simulated LR layer again
        codec = layer_coding(layer).codec if layer is not None else None
        return default_model_name(self.models, codec=codec, preset=preset)

    def update_default(self, layer: Any) -> None:
        """Select the default model for `layer` and the "Simulate LR" choice, unless a
        model was picked by hand."""
        if self.by_hand or self.models is None:
            return  # before the probe the box holds "default", resolved at Enhance
        name = self.auto_model(layer, self.simulate_preset)
        index = self.model_box.findData(name)
        if index >= 0:
            self.model_box.setCurrentIndex(index)
            self.index = index

    def fill_models(self, models: list[dict], layer: Any) -> None:
        """List the bundled `models`, then the files loaded so far; select the model
        picked by hand, or else the default for `layer`."""
        chosen = self.model_box.currentData()
        files = [
            (self.model_box.itemText(i), self.model_box.itemData(i))
            for i in range(self.model_box.count())
            if self.model_box.itemData(i) not in (None, LOAD_FILE)
        ]
        self.model_box.clear()
        for m in models:
            kind, speed = m.get("kind", "deterministic"), m.get("speed", "fast")
            self.model_box.addItem(f"{m['name']}  ({kind}, x{m['scale']}, {speed})", m["name"])
            index = self.model_box.count() - 1
            tip = m["description"] if m["available"] else "weights not installed"
            if kind == "zero-shot":
                tip += "; train it on the view with Fine-tune's 'Zero-shot on this view'"
            self.model_box.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
            if not m["available"]:
                model = self.model_box.model()
                assert isinstance(model, QStandardItemModel)
                item = model.item(index)
                assert item is not None
                item.setEnabled(False)
        for text, path in files:
            self.model_box.addItem(text, path)
        self.model_box.addItem(LOAD_FILE, LOAD_FILE)
        self.models = models
        if self.by_hand and chosen is not None:
            default = chosen
        else:
            default = self.auto_model(layer, self.simulate_preset)
        self.model_box.setCurrentIndex(max(0, self.model_box.findData(default)))
        self.index = self.model_box.currentIndex()

    def show_model(self, model: Any) -> None:
        """Select `model` (a bundled name or a file path) in the list, adding a file."""
        if not isinstance(model, str | os.PathLike):
            return
        key = str(model)
        index = self.model_box.findData(key)
        if index < 0 and is_model_path(model):
            index = self.model_box.findData(LOAD_FILE)
            self.model_box.insertItem(index, Path(key).name, key)
            self.model_box.setItemData(index, key, Qt.ItemDataRole.ToolTipRole)
        if index >= 0:
            self.model_box.setCurrentIndex(index)
            self.index = index

    def drop_file(self, path: str | None) -> None:
        """Take a model file off the list (None: nothing) and select nothing, so that
        the next `show_model` selects anew."""
        index = self.model_box.findData(path) if path is not None else -1
        if index >= 0:
            self.model_box.removeItem(index)
        self.model_box.setCurrentIndex(-1)
        self.index = -1
