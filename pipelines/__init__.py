"""Data flow of lemevit-geo: tiling, reading, batching, inference, stitching, writing and training."""
