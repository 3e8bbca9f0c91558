"""lemevit-geo: large remote-sensing scenes to maps with LeMeViT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lemevit-geo")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
