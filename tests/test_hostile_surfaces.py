"""Hostile use of the newer surfaces (issue 19): `evaluate`, `pretrain`, `train` on own data (also detection
labels), `detect` and the help screens. Each case: the exit code, the single stderr line, no leftovers, and
nothing outside the named output changed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from lemevit_geo.pipelines.apps.synthetic import make_scene
from tests.conftest import cli_main


def one_line_error(r: subprocess.CompletedProcess, message: str, code: int = 1) -> str:
    """Assert ``r`` failed with ``code`` and one stderr line holding ``message``; return the line."""
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def listing(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size and modification time (to see what a run changed)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# -- help ------------------------------------------------------------------------------------------------------


def test_help_lists_commands_in_a_users_order_and_flags_as_flags() -> None:
    r = cli_main("--help")
    assert r.returncode == 0
    names = re.findall(r"^│ (\w+) ", r.stdout, flags=re.M)
    assert [n for n in names if n not in ("debug", "help")] == [
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
    ]
    assert "<bool>" not in r.stdout
    for command in (["segment"], ["train"], ["evaluate"], ["pretrain"], ["bundle", "init"], ["detect"]):
        r = cli_main(*command, "--help")
        assert r.returncode == 0 and "<bool>" not in r.stdout, (command, r.stdout)
        assert "--overwrite" in r.stdout or command == ["evaluate"]
    r = cli_main("segment", "--help")
    assert re.search(r"--tile-size\s+<int>", r.stdout)  # options that take a value keep their type
    assert re.search(r"--cog\s+Write a Cloud", r.stdout)  # a flag: no type between the flag and its help


# -- train: own data implies the custom dataset ----------------------------------------------------------


def test_train_on_own_data_needs_no_dataset(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=5)
    out = tmp_path / "m.safetensors"
    args = ["--images", scene.before, "--labels", scene.labels, "--out", out, "--fast-dev-run", "--batch-size", 2]
    r = cli_main("train", *args, "--tile-size", 64, "--val-fraction", 0.3, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["dataset"] == "custom" and out.is_file()


def test_train_asks_for_a_dataset_only_without_own_data(tmp_path: Path) -> None:
    r = cli_main("train", "--out", tmp_path / "m.safetensors")
    assert r.returncode == 2 and "--dataset" in r.stderr and "--images" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_own_data_with_a_torchgeo_dataset(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=128, seed=5)
    before = listing(tmp_path)
    r = cli_main("train", "--dataset", "potsdam", "--root", tmp_path, "--images", scene.before, "--out", tmp_path / "m")
    one_line_error(r, "--images give own data, which --dataset potsdam does not read")
    assert listing(tmp_path) == before
