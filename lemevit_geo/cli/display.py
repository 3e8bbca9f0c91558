"""What the commands print: progress bars and summary tables on stderr, JSON summaries on stdout."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from lemevit_geo.cli.app import console
from lemevit_geo.options import Display


def print_json(summary: dict[str, Any]) -> None:
    """Print a machine-readable summary on stdout."""
    typer.echo(json.dumps(summary, indent=2, default=str))


def report(summary: dict[str, Any], display: Display) -> None:
    """Print a run's summary: JSON on stdout with ``--json``, nothing with ``--quiet``, else a table."""
    if display.json:
        print_json(summary)
    elif not display.quiet:
        table = Table(show_header=False, box=None)
        for key, value in summary.items():
            table.add_row(key, json.dumps(value, default=str) if isinstance(value, dict | list) else str(value))
        console.print(table)


class _Rate(TextColumn):
    """Tiles per second."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task: Any) -> Text:
        return Text(f"{task.speed or 0:.1f} tiles/s")


class TileProgress:
    """A Rich progress bar over tiles, shown once the run knows its tile count (so errors stay one line)."""

    def __init__(self, hidden: bool) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TimeRemainingColumn(),
            console=console,
            disable=hidden,
        )
        self.task = self.bar.add_task("tiles", total=None, start=False)

    def start(self, total: int) -> None:
        self.bar.update(self.task, total=total)
        self.bar.start_task(self.task)
        self.bar.start()

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


@contextlib.contextmanager
def tile_progress(display: Display) -> Iterator[TileProgress]:
    """A :class:`TileProgress` for the run, hidden with ``--quiet`` or ``--json``, always stopped."""
    progress = TileProgress(hidden=not display.progress)
    try:
        yield progress
    except BaseException:
        progress.bar.live.transient = True  # a failed run's error stays the only line
        raise
    finally:
        progress.bar.stop()
