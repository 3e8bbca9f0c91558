"""Shared helpers: real GeoTIFFs in tmp_path, bundles made through the CLI, CLI runners.

Session fixtures for new tests (each built once per pytest process, read-only for the tests that use them):
``seg_bundle`` and ``cls_bundle`` (untrained tiny bundles, 3 bands), ``change_bundle`` (untrained, 3 bands, 64 px
tiles), ``synthetic_scene`` (the demo's generated 4-band scene, 320 px) and ``trained_bundle(task)`` (one short
``train`` run on that scene per task, segment, change or detect, made when first asked for: the bundle and the
command's ``--json`` summary).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

from lemevit_geo.cli import app


def _split_threads_between_workers() -> None:
    """Under pytest-xdist, give each worker its share of the cores: torch reads ``OMP_NUM_THREADS`` when it is
    first imported (the imports above do not import it) and subprocesses inherit it. Two workers with two torch
    threads each on two cores run several times slower than with one each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


_split_threads_between_workers()


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


@pytest.fixture(scope="session")
def change_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "change.safetensors"
    cli("bundle", "init", "--task", "change", "--bands", "3", "--tile-size", "64", "-o", path)
    return path


class SceneFiles(Protocol):
    """The files of a generated scene (what ``make_scene`` returns), by what they hold rather than by class."""

    before: Path
    after: Path
    labels: Path
    change: Path
    objects: Path


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """The demo's generated place at 320 px (seed 5): two 4-band dates, land-cover and change labels, objects."""
    from lemevit_geo.pipelines.apps.synthetic import make_scene

    return make_scene(tmp_path_factory.mktemp("synthetic") / "scene", size=320, seed=5)


def _train_inputs(task: str, scene: SceneFiles) -> list[object]:
    """The ``train --dataset custom`` inputs for ``task`` from a generated scene."""
    inputs: dict[str, list[object]] = {
        "segment": ["--images", scene.before, "--labels", scene.labels],
        "change": ["--before", scene.before, "--after", scene.after, "--labels", scene.change],
        "detect": ["--task", "detect", "--images", scene.before, "--labels", scene.objects],
    }
    return inputs[task]


SHORT_TRAINING = ["--epochs", 1, "--steps-per-epoch", 2, "--batch-size", 2, "--tile-size", 64, "--val-fraction", 0.25]


@pytest.fixture(scope="session")
def trained_bundle(
    synthetic_scene: SceneFiles, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, dict]]:
    """``trained_bundle(task)``: a bundle from two training steps on ``synthetic_scene`` and the ``--json``
    summary of its ``train`` run, one per task for the session."""
    made: dict[str, tuple[Path, dict]] = {}

    def get(task: str) -> tuple[Path, dict]:
        if task not in made:
            out = tmp_path_factory.mktemp(f"trained_{task}") / f"{task}.safetensors"
            args = ["train", "--dataset", "custom", *_train_inputs(task, synthetic_scene), "--out", out]
            made[task] = (out, json.loads(cli(*args, *SHORT_TRAINING, "--json").output))
        return made[task]

    return get


def cli_error(*args: object) -> str:
    """Run the CLI's entry point in-process expecting a user error (exit code 1, one line on stderr); return
    that line."""
    r = cli_main(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    return lines[0]
