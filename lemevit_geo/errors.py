"""Exceptions that the command line reports as one clear line and exit code 1.

Messages name the parameter a user can change in backticks (`overwrite`, `tile_size`): read from
Python, that is the keyword argument; the command line shows the matching flag (``--overwrite``).
"""

import re

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


def with_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with each `parameter` replaced by its command-line flag (or left bare if it has none)."""
    return PARAMETER.sub(lambda m: flags.get(m.group(1), m.group(1)), message)
