"""The "Compare" widget (`widget.CompareWidget`): the view; `table` shows the readouts
that `inference.readouts` computes; `panel` and `maps` are its honest-SR part (the
departure map and the uncertainty of samples). Nothing is imported here, so that
importing a submodule stays as light as it is."""
