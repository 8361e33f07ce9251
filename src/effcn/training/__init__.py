"""Configs, the one training loop and its tasks, evaluation, run directories, checkpoints."""
