"""The Typer application and the one place that turns failures into exit codes.

Exit codes: 0 done; 1 failed run (one line on stderr: what failed and how to fix it; a traceback
only with ``--debug``); 2 usage error (click's usage message); 130 interrupted by SIGINT (Ctrl-C);
143 terminated by SIGTERM. Outputs of a run that does not finish are removed on the way out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from lemevit_geo.errors import GDAL_ERRORS, LemevitError, LemevitWarning, with_flags

#: The order a user meets the commands in; ``--help`` lists them so (any other command after them).
COMMAND_ORDER = (
    "segment",
    "change",
    "classify",
    "detect",
    "evaluate",
    "train",
    "pretrain",
    "merge",
    "bundle",
    "demo",
    "info",
    "init",
    "show",
)


def _flags_as_flags(params: list[Any]) -> list[Any]:
    """Show flags (``--overwrite``, ``--help``) with no value type in the help boxes, as click does: Typer would
    print ``<bool>``, which reads like an option that takes a value."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Commands(TyperGroup):
    """The command group of ``lemevit-geo``: commands in :data:`COMMAND_ORDER`, flags shown as flags."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _flags_as_flags(super().get_params(ctx))

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not isinstance(command, Commands):
            _flags_as_flags(command.get_params(ctx))
        return command


app = typer.Typer(
    cls=Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Large remote-sensing scenes to maps with the LeMeViT vision transformer.",
)
bundle_app = typer.Typer(cls=Commands, no_args_is_help=True, help="Make and inspect model bundles.")
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
        from lemevit_geo.outputs import writing

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.unfinished = writing()  # an output was being written (and is removed on the way out)


def _ignore_signals() -> None:
    """SIGINT and SIGTERM do nothing from now on (the interpreter keeps an ignored signal ignored as it exits)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _ignore_signals()  # a second signal during the cleanup must not cut it short
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
    # torchgeo's self-supervised tasks define a no-op validation step; pretraining has no validation data
    warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
    # a rerun (--overwrite, or after a failed run) writes its checkpoints over the last run's, in its own folder
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    rasterio_log = logging.getLogger("rasterio")
    if GDAL_ERRORS not in rasterio_log.handlers:  # GDAL's own error lines go into our one error line
        rasterio_log.addHandler(GDAL_ERRORS)


_show_warning = warnings.showwarning
_pending_warnings: list[str] = []


def _warn(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """Our warnings are kept for the end of a successful run (a failed run says one line); others as usual."""
    if issubclass(category, LemevitWarning):
        _pending_warnings.append(with_flags(str(message), _flags()))
    else:
        _show_warning(message, category, *args, **kwargs)  # type: ignore[arg-type]


def _print_warnings() -> None:
    """Our warnings, one line each, once each."""
    for message in dict.fromkeys(_pending_warnings):
        console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
    _pending_warnings.clear()


def quiet_lightning() -> None:
    """Lightning's info lines (devices, tips) off; call after importing Lightning, whose import sets them on."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _library_output_aside() -> Iterator[None]:
    """Send what C libraries print straight to file descriptor 2 (libtiff's "_tiffWriteProc: File too large.")
    to a scratch file, while Python's stderr (our messages, the progress bar) stays on the terminal."""
    try:
        real = sys.stderr.fileno() == 2
    except (OSError, ValueError, AttributeError):
        real = False
    if not real:  # Python's stderr is not the process's (captured, embedded): nothing to set aside
        yield
        return
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors="replace")
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as scratch:
        saved = os.dup(2)
        os.dup2(scratch.fileno(), 2)
        sys.stderr = terminal
        try:
            yield
        finally:
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            terminal.close()


def run_guarded(command: Callable[[], object]) -> None:
    """Run ``command`` the way the CLI runs commands: signals become :class:`Interrupted` (cleanup on the way
    out), our errors one line on stderr, and every ending an exit code (see the module docstring)."""
    _quiet_libraries()
    warnings.simplefilter("always", LemevitWarning)
    warnings.showwarning = _warn
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    debug = "--debug" in sys.argv[1:2]
    with contextlib.nullcontext() if debug else _library_output_aside():
        _run(command)


def _run(command: Callable[[], object]) -> None:
    try:
        try:
            command()
        finally:
            # the command has ended, one way or another: a late signal must not change how (otherwise one
            # arriving while the interpreter exits kills it with no line and no documented exit code)
            _ignore_signals()
        _print_warnings()
    except SystemExit as exc:
        if exc.code in (0, None):
            _print_warnings()
        raise
    except LemevitError as exc:
        _pending_warnings.clear()
        if _debug["on"]:
            raise
        message = escape(with_flags(str(exc), _flags()))
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Interrupted as exc:
        removed = ": unfinished outputs removed" if exc.unfinished else ""
        console.print(f"[bold red]interrupted[/] ({exc}){removed}", highlight=False)
        sys.exit(128 + exc.signum)
    except MemoryError:
        console.print(f"[bold red]error:[/] out of memory{_memory_advice()}", highlight=False)
        sys.exit(1)


#: Commands whose memory --batch-size and --tile-size bound.
TILED_COMMANDS = ("segment", "change", "classify", "detect", "train", "pretrain")


def _memory_advice() -> str:
    """What lowers the memory of the command being run (only options it takes)."""
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    return ": lower --batch-size or --tile-size" if command in TILED_COMMANDS else ""


def main() -> None:
    """Console-script entry point (see the module docstring for the exit codes)."""
    run_guarded(lambda: app(standalone_mode=True))  # click prints usage errors and exits 2
