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


def cli_error(*args: str) -> str:
    """Run the CLI in-process expecting a user error; return its message as the command line shows it."""
    from lemevit_geo.cli.app import _flags
    from lemevit_geo.errors import LemevitError, with_flags

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, LemevitError), (result.exit_code, result.output, result.exception)
    return with_flags(str(result.exception), _flags())


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
