"""The Typer application and the one place that turns failures into exit codes.

Exit codes: 0 done; 1 failed run (one line on stderr: what failed and how to fix it; a traceback
only with ``--debug``); 2 usage error (click's usage message); 130 interrupted by SIGINT (Ctrl-C);
143 terminated by SIGTERM. Outputs of a run that does not finish are removed on the way out.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from lemevit_geo.errors import LemevitError, with_flags

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Large remote-sensing scenes to maps with the LeMeViT vision transformer.",
)
bundle_app = typer.Typer(no_args_is_help=True, help="Make and inspect model bundles.")
app.add_typer(bundle_app, name="bundle")

#: Messages and progress go to stderr; stdout carries only JSON summaries.
console = Console(stderr=True)
_debug = {"on": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Large remote-sensing scenes to maps with the LeMeViT vision transformer."""
    _debug["on"] = debug


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM, so that every ``finally`` cleans up on the way out.

    Not a ``KeyboardInterrupt``: click would turn that into "Aborted!" and exit code 1.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # a second signal during the cleanup must not cut it short
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def _flags() -> dict[str, str]:
    """Every parameter name of every command, with its long flag (``tile_size`` -> ``--tile-size``)."""

    def walk(command: object) -> Iterator[object]:
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    flags: dict[str, str] = {}
    for command in walk(typer.main.get_command(app)):
        for param in getattr(command, "params", []):
            longs = [o for o in param.opts if o.startswith("--")]
            if longs and param.name:
                flags[param.name] = longs[0]
    return flags


def _quiet_libraries() -> None:
    """Keep the terminal to our own messages: no library tips, no warnings that users cannot act on."""
    # rasters without georeferencing are refused, or accepted on purpose with --allow-pixel-grid
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    warnings.filterwarnings("ignore", message="The given matrix is equal to Affine.identity")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation noise
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    """Console-script entry point (see the module docstring for the exit codes)."""
    _quiet_libraries()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    try:
        app(standalone_mode=True)  # click prints usage errors and exits 2
    except LemevitError as exc:
        if _debug["on"]:
            raise
        message = escape(with_flags(str(exc), _flags()))
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Interrupted as exc:
        console.print(f"[bold red]interrupted[/] ({exc}): unfinished outputs removed", highlight=False)
        sys.exit(128 + exc.signum)
    except MemoryError:
        console.print("[bold red]error:[/] out of memory: lower --batch-size or --tile-size", highlight=False)
        sys.exit(1)
