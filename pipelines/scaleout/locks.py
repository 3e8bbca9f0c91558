"""Locks on a parts directory, and the sweep of temporaries that interrupted runs left behind.

A parts directory holds a ``lock`` file with POSIX record locks (``fcntl.lockf``; they also hold on NFS):
byte 0 is the directory's lock, shared by array tasks (``part`` ``i/N``, which may run at the same time)
and exclusive for a run that merges (a whole run, ``lemevit-geo merge``), which also removes the directory;
byte ``1 + i`` is held by the run that runs part ``i``. A run that cannot take its lock fails at once with one
line that says another run holds it. Locks end with the process, so a killed run never leaves one behind.

Whoever holds a lock may remove the temporaries under it: the exclusive holder those of the whole
directory and of the outputs beside it, a part's holder those of its part.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from lemevit_geo.errors import LemevitError

LOCK_FILE = "lock"


class Locked(LemevitError):
    """Another run holds the lock."""


class PartsLock:
    """The lock of one parts directory (made if missing); see the module docstring.

    Args:
        folder: The parts directory.
        exclusive: Hold the directory alone (a run that merges), else share it with other array tasks.
        label: The output the directory belongs to, as messages name it.
    """

    def __init__(self, folder: Path, exclusive: bool, label: str) -> None:
        self.folder, self.exclusive, self.label = folder, exclusive, label
        self._fd: int | None = None

    def _open(self) -> int:
        """The lock file's descriptor with byte 0 locked: retried if the directory was removed meanwhile."""
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        for _ in range(10):
            self.folder.mkdir(exist_ok=True)
            try:
                fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # removed between mkdir and open
                continue
            try:
                fcntl.lockf(fd, mode | fcntl.LOCK_NB, 1, 0)
            except OSError:
                os.close(fd)
                raise Locked(
                    f"another run holds {self.folder} (it runs or merges the parts of {self.label}): "
                    "wait for it to end, or stop it"
                ) from None
            with contextlib.suppress(OSError):  # the file we locked is still the directory's
                if os.stat(self.folder / LOCK_FILE).st_ino == os.fstat(fd).st_ino:
                    return fd
            os.close(fd)
        raise Locked(f"{self.folder} keeps being removed by another run: wait for it to end")

    def __enter__(self) -> PartsLock:
        self._fd = self._open()
        return self

    def part(self, index: int, count: int) -> None:
        """Hold part ``index`` (until the lock is released), or fail if another run holds it."""
        assert self._fd is not None
        if self.exclusive:
            return
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1 + index)
        except OSError:
            raise Locked(
                f"another run is running part {index}/{count} of {self.label}: wait for it to end, or stop it"
            ) from None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases every lock this process holds on the file
            self._fd = None


#: What GDAL or SQLite add beside a temporary.
COMPANIONS = r"(\.aux\.xml|-journal|-wal|-shm)?"


def temporaries(folder: Path, stem: str, suffix: str) -> list[Path]:
    """The temporaries of the file ``<stem><suffix>`` in ``folder`` (also of ``<stem>.conf.tif``, the confidence
    raster a polygon output is made from)."""
    # the names lemevit_geo.outputs.temporary_sibling gives
    pattern = re.compile(rf"\.{re.escape(stem)}(\.conf)?\.[0-9a-f]{{8}}\.partial{re.escape(suffix)}{COMPANIONS}")
    try:
        return [p for p in folder.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []


def _remove(stale: Path) -> None:
    with contextlib.suppress(OSError):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def sweep_folder(folder: Path) -> None:
    """Remove every temporary in ``folder`` (a parts directory held alone: all of them are stale)."""
    pattern = re.compile(rf"\..+\.[0-9a-f]{{8}}\.partial\.[A-Za-z0-9]+{COMPANIONS}")
    with contextlib.suppress(OSError):
        for stale in folder.iterdir():
            if pattern.fullmatch(stale.name):
                _remove(stale)


def sweep(paths: Iterable[Path]) -> int:
    """Remove the temporaries of each file in ``paths`` that an earlier, interrupted run left; return how many."""
    removed = 0
    for path in paths:
        for stale in temporaries(path.parent, path.stem, path.suffix):
            _remove(stale)
            removed += 1
    return removed


def removed_name(folder: Path) -> Path:
    """Where a parts directory goes before it is removed (a rename, then a removal that may be cut short):
    a temporary of the directory, which :func:`sweep` finds."""
    return folder.with_name(f".{folder.stem}.{os.urandom(4).hex()}.partial{folder.suffix}")
