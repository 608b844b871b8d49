"""Shared runtime of the segmentation runner: device shim, distributed, AMP, metrics,
checkpoints and logging. Nothing here imports a vendor package at import time."""
