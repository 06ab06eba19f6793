"""Settings, data, the training and search loops, checkpoints, distributed helpers, evaluation."""
