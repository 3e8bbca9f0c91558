"""The ``lemevit-geo`` command line: parse, call a pipeline, print.

Heavy libraries (torch, rasterio, ...) are imported inside the commands so ``--help`` stays fast.
Every error the user can fix is a :class:`~lemevit_geo.errors.LemevitError`; :func:`main` turns it into
one line on stderr and exit code 1 (see :mod:`lemevit_geo.cli.app` for every exit code).
"""

from lemevit_geo.cli import evaluate, predict, tools, train  # noqa: F401  (the modules register their commands)
from lemevit_geo.cli.app import app, main

__all__ = ["app", "main"]
