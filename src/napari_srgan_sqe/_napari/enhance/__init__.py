"""The "Enhance" widget, a package: `widget` (EnhanceWidget: the button, the workers,
the model switch), `form` (EnhanceForm: the boxes and the model list, whose default
follows the LR), `pairs` (which layers a press works on, and placing its LR and SR
layers), `status` (the status line, "Stored as", the SR layer's name). Preparing an
enhancement is `inference.enhancement`, without Qt."""
