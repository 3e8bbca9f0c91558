"""Atomic output files: written under a temporary name beside the target, renamed at the end."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from lemevit_geo.errors import OutputError


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an output whose directory is missing or not writable, or that exists without ``overwrite``."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {parent} is not writable")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass `overwrite` to replace it")
    if path.is_dir():
        raise OutputError(f"{path} is a directory")


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside ``path`` that keeps its extension (drivers pick formats by it)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path``, on any error remove it.

    Sidecar files GDAL writes beside the temporary (``.aux.xml``) are renamed or removed with it.
    """
    check_output(path, overwrite)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
        aux = Path(f"{tmp}.aux.xml")
        if aux.exists():
            os.replace(aux, Path(f"{path}.aux.xml"))
    finally:
        for leftover in (tmp, Path(f"{tmp}.aux.xml")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
