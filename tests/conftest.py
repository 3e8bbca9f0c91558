"""Shared helpers: real GeoTIFFs in tmp_path, bundles made through the CLI, CLI runners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

from lemevit_geo.cli import app

CRS = "EPSG:32632"
ORIGIN = (350_000.0, 5_600_000.0)
GSD = 0.5


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str | None = CRS,
    transform: rasterio.Affine | None = None,
    nodata: float | None = None,
) -> Path:
    """Write a (bands, H, W) array as a GeoTIFF with a projected CRS."""
    bands, height, width = data.shape
    transform = transform if transform is not None else from_origin(*ORIGIN, GSD, GSD)
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype=data.dtype.name, nodata=nodata)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def textured_scene(height: int, width: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 255, size=(bands, height, width), dtype=np.uint8)


def cli(*args: str) -> object:
    """Run the CLI in-process (fast; for successful runs)."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def cli_main(*args: object) -> subprocess.CompletedProcess:
    """Run the CLI's entry point in-process (as ``lemevit-geo`` runs it: exit codes, error lines on stderr)."""
    import contextlib
    import io
    import signal

    from lemevit_geo.cli import main

    out, err = io.StringIO(), io.StringIO()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    argv = sys.argv
    sys.argv = ["lemevit-geo", *map(str, args)]
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(args, code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


def cli_subprocess(*args: str) -> subprocess.CompletedProcess:
    """Run the installed CLI as users do (for exit codes and error lines)."""
    return subprocess.run(
        [sys.executable, "-m", "lemevit_geo", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="session")
def seg_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "seg.safetensors"
    cli(
        "bundle",
        "init",
        "--task",
        "segment",
        "--arch",
        "tiny",
        "--classes",
        "water,forest,urban",
        "--bands",
        "3",
        "--tile-size",
        "128",
        "-o",
        path,
    )
    return path


@pytest.fixture(scope="session")
def cls_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "cls.safetensors"
    cli(
        "bundle",
        "init",
        "--task",
        "classify",
        "--classes",
        "field,forest,town,lake",
        "--bands",
        "3",
        "--tile-size",
        "64",
        "-o",
        path,
    )
    return path


def cli_error(*args: object) -> str:
    """Run the CLI's entry point in-process expecting a user error (exit code 1, one line on stderr); return
    that line."""
    r = cli_main(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    return lines[0]
