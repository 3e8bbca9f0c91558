"""Scale-out under hostile use: parts directories that were copied, tampered with, truncated or interrupted,
two runs at once, more parts than tile rows, executors with nothing at their address, signals during merge.

Every case checks what a user sees (the exit code and the one line on stderr) and what is left on disk
(nothing under the output's name, nothing changed outside it); the merges that succeed give the bytes of a
single-process run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import geopandas as gpd
import pytest

from tests.conftest import cli, cli_main, textured_scene, write_raster
from tests.test_scale import one_thread, structured  # noqa: F401 (one torch thread, as the parts had)

FIXED = ["--device", "cpu", "--precision", "fp32", "--overlap", "16"]
HEIGHT, WIDTH = 384, 256  # tile 64, overlap 16: 8 tile rows of 5 tiles


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle, a scene, its three parts written by array tasks with relative paths (in ``tpl/``), and the
    outputs of a single-process run (in ``ref/``)."""
    root = tmp_path_factory.mktemp("hostile")
    args = ["--task", "segment", "--classes", "a,b,c", "--bands", "3", "--tile-size", "64", "--seed", "1"]
    cli("bundle", "init", *args, "-o", root / "seg.safetensors")
    write_raster(root / "scene.tif", structured(HEIGHT, WIDTH, 0))
    (root / "tpl").mkdir()
    (root / "ref").mkdir()
    outputs = ["-o", "m.tif", "--vector", "v.gpkg", "--probabilities", "p.tif", "-m", "../seg.safetensors"]
    with contextlib.chdir(root / "tpl"):
        for i in range(3):
            cli("segment", "../scene.tif", *outputs, *FIXED, "--parts", 3, "--part", f"{i}/3", "-q")
    with contextlib.chdir(root / "ref"):
        cli("segment", "../scene.tif", *outputs, *FIXED, "-q")
    return root


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def parts_in(folder: Path, data: Path) -> Path:
    """A copy of the template's parts directory in ``folder``; the output it belongs to."""
    folder.mkdir(exist_ok=True)
    shutil.copytree(data / "tpl" / "m.tif.parts", folder / "m.tif.parts")
    return folder / "m.tif"


def assert_merged_like_one_process(output: Path, data: Path) -> None:
    """The class raster, probabilities and polygons of a merge equal those of the single-process run."""
    ref = tree(data / "ref")
    got = tree(output.parent)
    for name in ("m.tif", "p.tif", "m.tif.aux.xml"):
        assert got[name] == ref[name], name
    a, b = gpd.read_file(output.parent / "v.gpkg"), gpd.read_file(data / "ref" / "v.gpkg")
    assert a.crs == b.crs and a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.geom_equals_exact(b.geometry, 0).all()


def one_line(r: subprocess.CompletedProcess, code: int = 1) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "`" not in lines[0]
    return lines[0]


# -- merge: missing parts, merged twice, the parts folder, another working directory ------------------------


def test_missing_parts_are_one_line_with_the_command_that_finishes_them(tmp_path: Path, data: Path) -> None:
    output = parts_in(tmp_path, data)
    for suffix in (".tif", ".json"):
        (output.parent / "m.tif.parts" / f"part-00001-of-00003{suffix}").unlink()
    before = tree(tmp_path)
    for extra in ([], ["--json"]):
        r = cli_main("merge", output, *extra)
        line = one_line(r)
        assert "parts 1 of 3 are not finished" in line and "segment command again" in line and "--part" in line
        assert "restart" not in line and "part i/" not in line and str(output) in line
        assert json.loads(r.stdout)["failed"] if extra else r.stdout == ""  # no table
        assert tree(tmp_path) == before


def test_merge_takes_the_parts_folder_from_anywhere_and_says_when_merged(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = parts_in(tmp_path / "run", data)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the parts were written with paths relative to another folder
    r = cli_main("merge", Path("..") / "run" / "m.tif.parts", "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads(r.stdout)["state"] == "done"
    assert_merged_like_one_process(output, data)
    assert sorted(p.name for p in output.parent.iterdir()) == ["m.tif", "m.tif.aux.xml", "p.tif", "v.gpkg"]
    assert list((tmp_path / "elsewhere").iterdir()) == []
    before = tree(tmp_path)
    for target in (output, Path(f"{output}.parts")):
        line = one_line(cli_main("merge", target))
        assert "is already merged" in line and str(output.absolute()) in line
    assert tree(tmp_path) == before


# -- job.json and sidecars checked field by field -------------------------------------------------------------


def _set(path: str, value: object) -> Callable[[dict], None]:
    def change(job: dict) -> None:
        *parents, key = path.split(".")
        for name in parents:
            job = job[int(name)] if isinstance(job, list) else job[name]
        job[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("{not json", "job.json is corrupt (not JSON"),
        (lambda job: job.pop("strips"), "field 'strips': field required"),
        (_set("tile", "64"), "field 'tile': input should be a valid integer"),
        (_set("strips.1.first", None), "field 'strips[1].first': input should be a valid integer"),
        (_set("colors", [[1, 2, 3]]), "field 'colors': 1 colours for 3 classes"),
        (_set("format_version", 1), "field 'format'"),
        (_set("output", "ABSOLUTE"), "field 'output'"),
        (_set("output", "other.tif"), "field 'output': names other.tif, but m.tif.parts holds the parts of m.tif"),
        (_set("outputs.vector", "../outside.gpkg"), "field 'outputs.vector': '../outside.gpkg' is not a path inside"),
        (_set("outputs.vector", "ABSOLUTE"), "field 'outputs.vector'"),
        (_set("raster", "sub/../../outside.tif"), "field 'raster'"),
    ],
)
def test_a_tampered_job_json_is_one_line_naming_the_field(
    tmp_path: Path, data: Path, change: str | Callable[[dict], None], said: str
) -> None:
    output = parts_in(tmp_path / "run", data)
    file = output.parent / "m.tif.parts" / "job.json"
    outside = tmp_path / "outside.gpkg"
    if isinstance(change, str):
        file.write_text(change)
    else:
        job = json.loads(file.read_text())
        change(job)
        text = json.dumps(job).replace('"ABSOLUTE"', json.dumps(str(outside)))
        file.write_text(text)
    before = tree(tmp_path)
    line = one_line(cli_main("merge", output))
    assert str(file) in line and said in line, line
    assert tree(tmp_path) == before and not outside.exists()


def test_a_copied_parts_directory_merges_beside_itself(tmp_path: Path, data: Path) -> None:
    """``run2/m.tif.parts`` copied from ``run1`` makes ``run2/m.tif`` and leaves ``run1`` as it was."""
    parts_in(tmp_path / "run1", data)
    output = parts_in(tmp_path / "run2", data)
    before = tree(tmp_path / "run1")
    r = cli_main("merge", output, "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert_merged_like_one_process(output, data)
    assert tree(tmp_path / "run1") == before


def _truncate(part: Path, side: Path) -> None:
    part.write_bytes(part.read_bytes()[:1000])


def _flip(part: Path, side: Path) -> None:
    raw = bytearray(part.read_bytes())
    raw[-100] ^= 0xFF
    part.write_bytes(bytes(raw))


def _side(key: str, value: object) -> Callable[[Path, Path], None]:
    def change(part: Path, side: Path) -> None:
        record = json.loads(side.read_text())
        record[key] = value
        side.write_text(json.dumps(record))

    return change


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (_truncate, "1000 bytes where part-00001-of-00003.json records"),
        (_flip, "its SHA-256 is not the one part-00001-of-00003.json records"),
        (_side("bands", "garbage"), "part-00001-of-00003.json: field 'bands': input should be a valid"),
        (_side("bands", [[0, 9999, [0]]]), "field 'bands[0]': rows or column chunks outside the part's strip"),
        (_side("class_pixels", [1, 2]), "field 'class_pixels': missing, or not one count per class"),
        (_side("file_size", "big"), "field 'file_size': input should be a valid integer"),
        (lambda part, side: side.write_text("{"), "part-00001-of-00003.json is corrupt (not JSON"),
    ],
)
def test_a_part_that_fails_its_check_is_refused_by_merge_and_run_again_on_resume(
    tmp_path: Path, data: Path, change: Callable[[Path, Path], None], said: str
) -> None:
    output = parts_in(tmp_path, data)
    parts = output.parent / "m.tif.parts"
    change(parts / "part-00001-of-00003.tif", parts / "part-00001-of-00003.json")
    before = tree(tmp_path)
    line = one_line(cli_main("merge", output))
    assert said in line and "run the segment command again" in line, line
    assert tree(tmp_path) == before
    if change is not _truncate:  # one rerun is enough to show the resume: the others fail the same check
        return
    args = ["segment", data / "scene.tif", "-o", output, "--vector", tmp_path / "v.gpkg"]
    args += ["--probabilities", tmp_path / "p.tif", "-m", data / "seg.safetensors", *FIXED, "--parts", 3, "--json"]
    r = cli_main(*args)
    assert r.returncode == 0, r.stderr
    assert [p["status"] for p in json.loads(r.stdout)["parts"]] == ["reused", "run", "reused"]
    assert_merged_like_one_process(output, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "m.tif.aux.xml", "p.tif", "v.gpkg"]


# -- signals during merge ----------------------------------------------------------------------------------------


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_merge_cleans_up_and_a_rerun_gives_the_bytes_of_one_process(
    tmp_path: Path, data: Path, sig: signal.Signals
) -> None:
    """Signals at random moments while the merge writes (its temporaries exist): never a crash, the exit code
    of the signal and one line, no temporary and no output left, the parts intact; then a clean merge. A signal
    that comes once the outputs are published (the merge records them as done) leaves them whole."""
    output = parts_in(tmp_path, data)
    parts = tree(output.parent / "m.tif.parts")
    rng, env, interrupted = random.Random(int(sig)), {**os.environ, "OMP_NUM_THREADS": "1"}, 0
    for _ in range(4):
        args = [sys.executable, "-m", "lemevit_geo", "merge", str(output), "-q"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 180
        while proc.poll() is None and not temporaries(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode in (0, 128 + sig), (proc.returncode, err)  # never a segmentation fault (-11)
        if proc.returncode == 0 or (tmp_path / "m.tif").exists():  # the merge had finished: start again
            if proc.returncode != 0:  # the signal came after the outputs were published: they are whole
                assert err.strip() == f"interrupted ({sig.name})", err
                assert_merged_like_one_process(output, data)
            for name in ("m.tif", "m.tif.aux.xml", "p.tif", "v.gpkg"):
                (tmp_path / name).unlink()
            shutil.rmtree(output.parent / "m.tif.parts", ignore_errors=True)
            parts_in(tmp_path, data)
            continue
        interrupted += 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"interrupted ({sig.name})"), err
        assert not temporaries(tmp_path), err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif.parts"], err  # err: which moment it met
        left = tree(output.parent / "m.tif.parts")
        assert {k: v for k, v in left.items() if k.startswith("part-")} == {
            k: v for k, v in parts.items() if k.startswith("part-")
        }
    assert interrupted >= 2
    r = cli_main("merge", output, "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert_merged_like_one_process(output, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "m.tif.aux.xml", "p.tif", "v.gpkg"]


def test_interrupted_says_outputs_removed_only_while_one_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lemevit_geo.cli.app import run_guarded
    from lemevit_geo.outputs import atomic_path

    def while_writing() -> None:
        with atomic_path(tmp_path / "x.tif") as tmp:
            tmp.write_bytes(b"x")
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)

    def after_publishing() -> None:
        with atomic_path(tmp_path / "y.tif") as tmp:
            tmp.write_bytes(b"y")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    said = []
    try:
        for command in (while_writing, after_publishing):
            with pytest.raises(SystemExit) as info:
                run_guarded(command)
            said.append((info.value.code, capsys.readouterr().err.strip()))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert said == [(130, "interrupted (SIGINT): unfinished outputs removed"), (143, "interrupted (SIGTERM)")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.tif"]


# -- two runs at once ----------------------------------------------------------------------------------------------

HOLD = """
import sys
from pathlib import Path
from lemevit_geo.pipelines.scaleout.locks import PartsLock
with PartsLock(Path(sys.argv[1]), sys.argv[2] == "alone", "m.tif") as lock:
    for index in sys.argv[3:]:
        lock.part(int(index), 3)
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def another_run(folder: Path, mode: str, *parts: int) -> Iterator[None]:
    """Another process that holds the lock of ``folder`` (``alone`` or ``shared``, and ``parts``) meanwhile."""
    args = [sys.executable, "-c", HOLD, str(folder), mode, *map(str, parts)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield
    finally:
        proc.communicate("")


def test_a_second_run_of_the_same_parts_says_another_run_holds_them(tmp_path: Path, data: Path) -> None:
    output = parts_in(tmp_path, data)
    folder = output.parent / "m.tif.parts"
    (folder / "part-00001-of-00003.json").unlink()
    run = ["segment", data / "scene.tif", "-o", output, "--vector", tmp_path / "v.gpkg", "--probabilities"]
    run += [tmp_path / "p.tif", "-m", data / "seg.safetensors", *FIXED, "--parts", 3]
    before = tree(tmp_path)
    with another_run(folder, "alone"):  # a merge or a whole run
        for args in (["merge", output], [*run, "--part", "1/3"], run):
            line = one_line(cli_main(*args))
            assert line == f"error: another run holds {folder} (it runs or merges the parts of {output}): " + (
                "wait for it to end, or stop it"
            )
    with another_run(folder, "shared", 1):  # an array task running part 1
        line = one_line(cli_main(*run, "--part", "1/3"))
        assert line == f"error: another run is running part 1/3 of {output}: wait for it to end, or stop it"
        assert "another run holds" in one_line(cli_main(*run))
        r = cli_main(*run, "--part", "0/3", "--json")  # another part at the same time: fine (finished: reused)
        assert r.returncode == 0 and json.loads(r.stdout)["parts_finished"] == [0], r.stderr
    del before["m.tif.parts/job.json"]  # rewritten by that array task, for its own output paths
    assert {k: v for k, v in tree(tmp_path).items() if k != "m.tif.parts/job.json"} == before


# -- more parts than tile rows; executors with nothing at their address --------------------------------------------


def test_more_parts_than_tile_rows_is_one_warning_and_json_says_what_each_part_covers(
    tmp_path: Path, data: Path
) -> None:
    scene = write_raster(tmp_path / "s.tif", textured_scene(160, 64))  # tile 64, overlap 16: 3 tile rows
    args = ["segment", scene, "-o", tmp_path / "m.tif", "-m", data / "seg.safetensors", *FIXED, "--parts", 4]
    r = cli_main(*args, "--part", "3/4", "--json")
    assert r.returncode == 0 and r.stderr.strip().splitlines() == [
        "warning: --part 3/4 selects no part: the run makes only 3 parts in all "
        "(a scene with fewer tile rows than --parts makes fewer parts)"
    ]
    summary = json.loads(r.stdout)
    assert summary["parts"] == 3 and summary["parts_run"] == []
    covered = [(p["part"], p["tile_rows"], p["rows"], p["status"]) for p in summary["coverage"]]
    halo = [0, 1, 1]  # blend: each strip after the first reruns the tile row before it
    assert covered == [(i, [i, i + 1], [48 * i, 48 * i + 48 if i < 2 else 160], "not run") for i in range(3)]
    assert [p["halo_rows"] for p in summary["coverage"]] == halo
    shutil.rmtree(tmp_path / "m.tif.parts")
    r = cli_main(*args, "-q")
    assert r.returncode == 0 and r.stderr.strip().splitlines() == [
        f"warning: fewer tile rows than the 4 parts asked for, so fewer parts: {scene}: 3"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "m.tif.aux.xml", "s.tif"]


@pytest.mark.parametrize(
    ("executor", "start"),
    [("dask://127.0.0.1:1", "start a Dask scheduler there"), ("ray://127.0.0.1:1", "start a Ray head")],
)
def test_an_executor_address_with_nothing_listening_fails_fast_in_one_line(
    tmp_path: Path, data: Path, executor: str, start: str
) -> None:
    scene = write_raster(tmp_path / "s.tif", textured_scene(64, 64))
    began = time.monotonic()
    r = cli_main("segment", scene, "-o", tmp_path / "m.tif", "-m", data / "seg.safetensors", "--executor", executor)
    line = one_line(r)
    assert time.monotonic() - began < 15
    assert "cannot reach the" in line and "at 127.0.0.1:1 (Connection refused)" in line and start in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
    r = cli_main("segment", scene, "-o", tmp_path / "m.tif", "-m", data / "seg.safetensors", "--connect-timeout", 0)
    assert "--connect-timeout must be above 0 seconds" in one_line(r)


def test_array_tasks_refuse_outputs_outside_the_output_folder(tmp_path: Path, data: Path) -> None:
    scene = write_raster(tmp_path / "s.tif", textured_scene(64, 64))
    (tmp_path / "out").mkdir()
    (tmp_path / "other").mkdir()
    args = ["segment", scene, "-o", tmp_path / "out" / "m.tif", "-m", data / "seg.safetensors", "--part", "0/2"]
    line = one_line(cli_main(*args, "--vector", tmp_path / "other" / "v.gpkg"))
    assert f"{tmp_path / 'other' / 'v.gpkg'} is outside {tmp_path / 'out'}: with --part, every output" in line
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["other", "out", "s.tif"]


def test_a_part_with_a_corrupt_input_is_one_line_without_a_table(tmp_path: Path, data: Path) -> None:
    from tests.test_scale import corrupt_block_scene

    scene = corrupt_block_scene(tmp_path / "bad.tif")  # a garbage block in scene rows 64-128
    output = tmp_path / "m.tif"
    r = cli_main("segment", scene, "-o", output, "-m", data / "seg.safetensors", *FIXED, "--parts", 2)
    line = one_line(r)
    assert line.startswith(f"error: part 0/2: {scene}: reading the window at column") and r.stdout == "", line
    assert not output.exists() and not temporaries(tmp_path)


def test_merge_of_a_directory_merges_the_good_scenes_and_names_the_bad_one(tmp_path: Path, data: Path) -> None:
    output = parts_in(tmp_path, data)
    shutil.copytree(tmp_path / "m.tif.parts", tmp_path / "n.tif.parts")
    (tmp_path / "n.tif.parts" / "job.json").write_text("{}")
    line = one_line(cli_main("merge", tmp_path))
    assert line.startswith("error: 1 of 2 scenes failed: ") and "n.tif.parts/job.json: field 'format'" in line
    assert_merged_like_one_process(output, data)
    names = ["m.tif", "m.tif.aux.xml", "m.tif.parts", "n.tif.parts", "p.tif", "v.gpkg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # parts directories go when every scene is merged
    done = ["done.json", "job.json", "lock", "summary.json"]  # merged: a rerun says "done earlier"
    assert sorted(p.name for p in (tmp_path / "m.tif.parts").iterdir()) == done


def test_the_next_merge_sweeps_what_a_killed_merge_left(tmp_path: Path, data: Path) -> None:
    """A merge killed (SIGKILL) after publishing the class raster, with temporaries beside the outputs and in
    the parts directory: the next merge takes the published raster back, sweeps the temporaries, and merges."""
    output = parts_in(tmp_path, data)
    folder = output.parent / "m.tif.parts"
    job = json.loads((folder / "job.json").read_text())
    journal = {"job_hash": job["job_hash"], "outputs": [str(output), str(tmp_path / "p.tif")]}
    (folder / "publishing.json").write_text(json.dumps(journal))
    output.write_bytes(b"half of a merge")
    stale = [tmp_path / ".m.0123abcd.partial.tif", tmp_path / ".m.conf.0123abcd.partial.tif.aux.xml"]
    stale += [tmp_path / ".v.89abcdef.partial.gpkg-journal", folder / ".part-00001-of-00003.0123abcd.partial.tif"]
    for path in stale:
        path.write_bytes(b"left")
    (tmp_path / ".other.0123abcd.partial.tif").write_bytes(b"another output's")
    r = cli_main("merge", output, "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert_merged_like_one_process(output, data)
    names = [".other.0123abcd.partial.tif", "m.tif", "m.tif.aux.xml", "p.tif", "v.gpkg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
