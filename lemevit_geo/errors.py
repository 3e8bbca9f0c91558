"""Exceptions that the command line reports as one clear line and exit code 1."""


class LemevitError(Exception):
    """An error the user can fix: bad input, missing file, incompatible model bundle."""


class InputError(LemevitError):
    """An input raster, vector or dataset cannot be used as given."""


class OutputError(LemevitError):
    """An output cannot be written where it was asked for."""


class BundleError(LemevitError):
    """A model bundle is missing, malformed, or made for another task."""
