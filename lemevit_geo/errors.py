"""Exceptions that the command line reports as one clear line and exit code 1.

Messages name the parameter a user can change in backticks (`overwrite`, `tile_size`): read from
Python, that is the keyword argument; the command line shows the matching flag (``--overwrite``).
"""

import logging
import re
from collections import deque

#: A parameter named in a message.
PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


class LemevitError(Exception):
    """An error the user can fix: bad input, missing file, incompatible model bundle."""


class InputError(LemevitError):
    """An input raster, vector or dataset cannot be used as given."""


class OutputError(LemevitError):
    """An output cannot be written where it was asked for."""


class BundleError(LemevitError):
    """A model bundle is missing, malformed, or made for another task."""


class LemevitWarning(UserWarning):
    """Something the user should know about a run that still went ahead (printed as one line)."""


def with_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with each `parameter` replaced by its command-line flag (or left bare if it has none)."""
    return PARAMETER.sub(lambda m: flags.get(m.group(1), m.group(1)), message)


class RecentGdalErrors(logging.Handler):
    """Keeps the last errors GDAL logged (through rasterio's loggers) instead of printing them, so an error
    line can name the root cause ("File too large") that the raised exception does not carry."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: deque[str] = deque(maxlen=8)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip())


#: Attached to the ``rasterio`` logger by the command line (which owns logging).
GDAL_ERRORS = RecentGdalErrors()
