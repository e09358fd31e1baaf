"""Training and evaluation: losses, metrics, the training loops behind `avtool train` and `avtool eval`."""
