"""The "Fine-tune" widget, a package: `widget` (FinetuneWidget: the layers, the buttons,
a run's progress), `settings` (the settings form), `plans` (what each button runs,
checked), `regions` (the Shapes layer of regions, the part in view), `curve` (the
loss / validation plot), `report` (a run in words). The jobs themselves are
`training.jobs`, shared with `srgan-sqe finetune` and `zero-shot`."""
