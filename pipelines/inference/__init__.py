"""Inference: tiling a scene, reading windows, running a model, stitching and writing, and one runner per command."""
