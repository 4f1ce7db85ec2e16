"""Runs that produce results files: the checkpoint walk, calibration sweeps, the training hook."""
