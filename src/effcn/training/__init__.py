"""Configs, the training loop, checkpoints and the metrics file."""
