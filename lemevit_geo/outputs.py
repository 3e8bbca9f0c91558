"""Atomic output files: written under a temporary name beside the target, published at the end.

Publishing never clobbers: without ``overwrite`` the finished file is hard-linked to its name, which
fails if a file of that name appeared meanwhile (another run writing the same output), so one of two
concurrent runs wins and the other fails with the usual "exists" line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from lemevit_geo.errors import LemevitError, OutputError


def _is_gdal_error(exc: BaseException) -> bool:
    from lemevit_geo.raster import READ_ERRORS

    return isinstance(exc, READ_ERRORS) or type(exc).__module__.startswith(("rasterio", "pyogrio", "fiona"))


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    from lemevit_geo.raster import read_error

    return read_error(exc)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path: Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an output that is one of the ``inputs``, whose directory is missing or cannot hold files, or
    that exists without ``overwrite``."""
    from lemevit_geo.inputs import local_file

    path = Path(path)
    for source in inputs:
        local = local_file(source)
        if local is not None and _same_file(path, local):
            raise OutputError(f"{path} is one of the inputs: choose another output name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist")
    if path.is_dir():
        raise OutputError(f"{path} is a directory")
    try:  # os.access says yes to root everywhere; a real probe also catches read-only mounts and /proc
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".lemevit-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"output directory {parent} is not writable: {exc.strerror or exc}") from exc
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass `overwrite` to replace it")


#: The temporaries of the outputs being written now (not yet published or removed).
_pending: set[Path] = set()


def writing() -> bool:
    """Whether an output is being written now: a signal at this moment leaves an unfinished output to remove."""
    return bool(_pending)


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside ``path`` that keeps its extension (drivers pick formats by it)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give the finished ``tmp`` its name: replace with ``overwrite``, else never clobber a file that appeared."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputError(f"{path} exists (written meanwhile?); pass `overwrite` to replace it") from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise OutputError(f"{path} exists; pass `overwrite` to replace it") from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path to write; on success publish it as ``path``, on any error remove it.

    Sidecar files GDAL writes beside the temporary (``.aux.xml``) are published or removed with it.
    """
    path = Path(path)
    check_output(path, overwrite, inputs)
    tmp = temporary_sibling(path)
    aux = Path(f"{tmp}.aux.xml")
    _pending.add(tmp)
    try:
        yield tmp
        publish(tmp, path, overwrite)
        if aux.exists():
            os.replace(aux, Path(f"{path}.aux.xml"))
    except LemevitError:
        raise
    except Exception as exc:  # a full disk, a file size limit, a failing driver: one line naming the output
        if not isinstance(exc, OSError) and not _is_gdal_error(exc):
            raise
        raise OutputError(f"writing {path} failed: {_message(exc)}") from exc
    finally:
        for leftover in (tmp, aux):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        _pending.discard(tmp)
