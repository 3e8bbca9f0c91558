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


def report_baselines(summary: dict[str, Any], display: Display) -> None:
    """Print the model's best validation metrics next to its baselines (``train``; not with --json or --quiet)."""
    rows = [("model", summary.get("validation") or {})]
    baselines = summary.get("baselines") or {}
    if "majority" in baselines:
        rows.append((f"majority class ({baselines['majority']['class']})", baselines["majority"]))
    if "pixel_classifier" in baselines:
        rows.append(("per-pixel gradient boosting", baselines["pixel_classifier"]))
    metrics = [m for m in ("OA", "mIoU", "F1") if any(m in r for _, r in rows)]
    if display.json or display.quiet or len(rows) < 2 or not metrics:
        return
    table = Table(title="validation", title_justify="left", box=None)
    table.add_column("")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for name, row in rows:
        table.add_row(name, *(f"{row[m]:.4f}" if m in row else "-" for m in metrics))
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
        progress.bar.live.transient = True  # a failed run's error stays the only line:
        progress.bar.live.stop()  # Progress.stop would add an empty line when stderr is not a terminal
        raise
    finally:
        if progress.bar.live.is_started:  # (Progress.stop prints that line even when the bar never started)
            progress.bar.stop()
