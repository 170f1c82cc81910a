"""Shared trainer: optimiser, train state, checkpoints, metric writers, the loop."""
