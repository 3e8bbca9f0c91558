"""lemevit-geo: large remote-sensing scenes to maps with LeMeViT."""

import os
from importlib.metadata import PackageNotFoundError, version

# GDAL's block cache defaults to 5% of RAM; tiles stream through once, so a small cache bounds memory
# without slowing reads (a user's own GDAL_CACHEMAX wins).
os.environ.setdefault("GDAL_CACHEMAX", "64")

try:
    __version__ = version("lemevit-geo")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
