"""Scale-out: many scenes, and one huge scene over many GPUs and machines, as parts and a merge.

A job (one scene, or one change pair) is split into **parts**: full-width strips of tile rows of the
scene's :class:`~lemevit_geo.pipelines.inference.tiling.TileGrid` (one part per scene by default). A strip that
outputs tile rows ``[first, stop)`` also runs the earlier rows whose tiles reach into its first output row
(its halo: in blend mode, every tile row whose tiles extend past ``ys[first]``; in crop mode none), with
the same tiles, the same row-aligned batches and the same stitcher state, so every output pixel comes out
as in a single-process run. Each part runs the streaming engine where an executor puts it
(:mod:`~lemevit_geo.pipelines.scaleout.executors`), reads its own windows and writes its own part file and sidecar
(:mod:`~lemevit_geo.pipelines.scaleout.parts`); one **merge** in the driver makes the outputs
(:mod:`~lemevit_geo.pipelines.scaleout.merge`).

**Resume**: a part whose file and sidecar exist with the job's ``parts_hash`` is not run again, and a scene
merged by an earlier run of the same command (``done.json`` with the same ``job_hash``, outputs untouched
since) is not merged again, so rerunning a command after a crash or preemption finishes only what is missing.
Parts directories are removed once the command succeeds for every scene (``keep_parts`` keeps them).
With ``part`` ``i/N`` only every N-th part (from the i-th) of all the scenes' parts runs and nothing is
merged: ``lemevit-geo merge`` joins them.

Failures are per scene: a scene whose planning, parts or merge fail is reported by name, and the others go on.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import glob
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lemevit_geo.choices import Task
from lemevit_geo.errors import InputError, LemevitError, LemevitWarning, OutputError
from lemevit_geo.inputs import InputSpec, local_file, stem
from lemevit_geo.pipelines.inference.change import plan_change
from lemevit_geo.pipelines.inference.classify import plan_classify
from lemevit_geo.pipelines.inference.detect import plan_detect
from lemevit_geo.pipelines.inference.engine import Progress
from lemevit_geo.pipelines.inference.plan import Plan, check_outputs
from lemevit_geo.pipelines.inference.segment import plan_segment
from lemevit_geo.pipelines.inference.tiling import TileGrid
from lemevit_geo.pipelines.scaleout.executors import RayExecutor, failure, is_inline, open_executor, reach
from lemevit_geo.pipelines.scaleout.jobs import (
    JOURNAL,
    Job,
    begin_publishing,
    done_summary,
    mark_done,
    plan_job,
    remove_parts,
    take_back,
    write_json,
)
from lemevit_geo.pipelines.scaleout.locks import Locked, PartsLock, sweep, sweep_folder
from lemevit_geo.pipelines.scaleout.merge import COUNT_KEYS, counts, merge_job
from lemevit_geo.pipelines.scaleout.parts import run_part
from lemevit_geo.pipelines.scaleout.records import JOB_FILE, PartError, check_part, load_job, parts_dir_of
from lemevit_geo.settings import DenseOutputs, ScaleOut

#: Names that say "file": with several inputs such an output is refused rather than made a directory.
FILE_SUFFIXES = (".tif", ".tiff", ".gpkg", ".parquet", ".geojson", ".json", ".vrt")


@dataclass
class SceneRun:
    """The driver's record of one scene: its job (or why it could not be planned), parts and outcome.

    ``state`` is ``planned``, ``done`` (merged now), ``done earlier`` (merged by an earlier run), ``parts``
    (this run's share of parts written, nothing merged) or ``failed``.
    """

    name: str
    job: Job | None = None
    error: str | None = None
    sidecars: dict[int, dict[str, Any]] = field(default_factory=dict)
    ran: list[int] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    state: str = "planned"

    def fail(self, message: str) -> None:
        if self.state != "failed":
            self.state, self.error = "failed", message


def expand_inputs(patterns: Sequence[str | Path]) -> list[str]:
    """The input paths: local patterns with glob characters expanded (sorted, each keeping the options the
    pattern carries after ``#``), other paths (URLs, files whose names hold such characters) as given, each once."""
    paths: list[str] = []
    for pattern in map(str, patterns):
        spec = InputSpec.parse(pattern)
        local = local_file(pattern)
        if local is not None and glob.has_magic(spec.source) and not os.path.exists(spec.source):
            found = sorted(glob.glob(spec.source, recursive=True))
            if not found:
                raise InputError(f"{pattern!r} matches no file")
            paths.extend(str(dataclasses.replace(spec, source=p)) for p in found)
        else:
            paths.append(pattern)
    return list(dict.fromkeys(paths))


def outputs_in(folder: Path, inputs: Sequence[str], suffix: str) -> list[Path]:
    """One output per input in the directory ``folder`` (made if missing), named after the input
    (``a.tif`` -> ``folder/a<suffix>``)."""
    if not folder.exists() and folder.suffix.lower() in FILE_SUFFIXES:
        raise OutputError(f"{folder}: with several inputs, outputs name directories (one file per input)")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the output directory {folder}: {exc.strerror or exc}") from exc
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a directory: with several inputs, outputs name directories")
    outputs = [folder / f"{stem(p)}{suffix}" for p in inputs]
    seen: dict[Path, str] = {}
    for path, source in zip(outputs, inputs, strict=True):
        if path in seen:
            raise InputError(f"{seen[path]} and {source} would both write {path}: rename one of them")
        seen[path] = source
    return outputs


def plan_scenes(names: Sequence[str], plan: Callable[[int], Job], single: bool) -> list[SceneRun]:
    """Plan each scene with ``plan(i)``; with several scenes one that cannot be planned is failed, not fatal."""
    scenes = []
    for i, name in enumerate(names):
        if single:
            scenes.append(SceneRun(name, plan(i)))
            continue
        try:
            scenes.append(SceneRun(name, plan(i)))
        except LemevitError as exc:
            scenes.append(SceneRun(name, error=str(exc), state="failed"))
    return scenes


def default_parts(scale_out: ScaleOut, scenes: int) -> int:
    """Strips per scene: as asked, else N for a single scene run as part i/N, else one."""
    if scale_out.parts is not None:
        return scale_out.parts
    return scale_out.part[1] if scale_out.part and scenes == 1 else 1


def _part_tiles(job: Job, index: int) -> int:
    strip = job.strips[index]
    grid = TileGrid(job.grid.height, job.grid.width, job.tile, job.overlap, fit=job.task.value != "classify")
    return (strip.stop - strip.halo) * len(grid.xs)


def _check_beside(job: Job) -> None:
    """Array tasks: every output must lie in the main output's folder, where ``lemevit-geo merge`` writes."""
    folder = job.output.parent.resolve()
    for path in job.outputs_written():
        if not path.resolve().is_relative_to(folder):
            raise OutputError(
                f"{path} is outside {folder}: with `part`, every output lies in the folder of {job.output.name} "
                "(the merge writes only there)"
            )


def _check_new(scene: SceneRun, single: bool, array: bool = False) -> bool:
    """Refuse outputs that exist (without ``overwrite``) for a scene not merged earlier, and (``array``: parts
    that ``lemevit-geo merge`` joins) outputs outside the main output's folder: fatal for a single scene, a
    failed scene among several."""
    job = scene.job
    assert job is not None
    try:
        check_outputs(job.outputs_written(), job.overwrite, [*job.inputs, job.model])
        if array:
            _check_beside(job)
    except LemevitError as exc:
        if single:
            raise
        scene.fail(str(exc))
        return False
    return True


def _selected(scenes: list[SceneRun], scale_out: ScaleOut) -> dict[int, list[int]]:
    """The parts this run may run, by scene: all of them, or with ``part`` ``i/N`` every N-th part (from the
    i-th) of all the planned scenes' parts (the same list in every array task)."""
    everything = [(n, k) for n, s in enumerate(scenes) if s.job is not None for k in range(s.job.count)]
    if scale_out.part is not None:
        i, n = scale_out.part
        everything = everything[i::n]
        if not everything:
            total = sum(s.job.count for s in scenes if s.job is not None)
            message = (
                f"`part` {i}/{n} selects no part: the run makes only {total} parts in all "
                "(a scene with fewer tile rows than `parts` makes fewer parts)"
            )
            warnings.warn(message, LemevitWarning, stacklevel=2)
    chosen: dict[int, list[int]] = {}
    for n, k in everything:
        chosen.setdefault(n, []).append(k)
    return chosen


def _recover(job: Job) -> None:
    """Take back the outputs that a merge of ``job`` which was killed had published (see ``jobs.take_back``)."""
    if (job.parts_dir / JOURNAL).exists():
        with contextlib.suppress(Locked), PartsLock(job.parts_dir, True, str(job.output)):
            take_back(job, stale=True)


def _claim(scene: SceneRun, exclusive: bool, stack: contextlib.ExitStack, single: bool) -> PartsLock | None:
    """Lock the scene's parts directory; a run that holds it alone sweeps what interrupted runs left there and
    beside the outputs. Another run's lock is fatal for a single scene, a failed scene among several."""
    job = scene.job
    assert job is not None
    try:
        lock = stack.enter_context(PartsLock(job.parts_dir, exclusive, str(job.output)))
    except LemevitError as exc:
        if single:
            raise
        scene.fail(str(exc))
        return None
    if exclusive:
        sweep([*job.outputs_written(), job.parts_dir])
        sweep_folder(job.parts_dir)
    return lock


def _todo(scene: SceneRun, lock: PartsLock, parts: list[int], scale_out: ScaleOut, run: bool) -> list[int]:
    """Of ``parts``, those that must run; the sidecars of finished ones go to the scene. A part whose file
    does not check out runs again; without ``run`` (a merge) it fails the scene, as missing parts do."""
    job = scene.job
    assert job is not None
    todo, missing = [], []
    for i in parts:
        lock.part(i, job.count)
        if run:
            sweep([job.part_file(i), job.sidecar(i)])
        try:
            side = None if scale_out.restart else check_part(job, i)
        except PartError as exc:
            if not run:
                scene.fail(f"{exc}: run the {job.task.value} command again (it runs this part again and merges)")
                return []
            side = None
        if side is not None:
            scene.sidecars[i] = side
        else:
            (todo if run else missing).append(i)
    if missing:
        names = ", ".join(map(str, missing))
        scene.fail(
            f"{job.output}: parts {names} of {job.count} are not finished: run the {job.task.value} command "
            "again without `part` (it reuses the finished parts and merges), or finish them with `part`"
        )
    return todo


def _warn_fewer(scenes: list[SceneRun], requested: int) -> None:
    """One warning for the scenes with fewer tile rows than the parts asked for (each runs as fewer parts)."""
    fewer = [s for s in scenes if s.job is not None and s.job.task != Task.detect and s.job.count < requested]
    if fewer:
        made = ", ".join(f"{s.name}: {s.job.count}" for s in fewer if s.job)
        message = f"fewer tile rows than the {requested} parts asked for, so fewer parts: {made}"
        warnings.warn(message, LemevitWarning, stacklevel=2)


def _prepare(
    scenes: list[SceneRun], scale_out: ScaleOut, stack: contextlib.ExitStack, run: bool
) -> list[tuple[SceneRun, int]]:
    """Skip scenes merged earlier, check the others' outputs, lock their parts directories, write their
    ``job.json``, collect finished parts; return the parts to run."""
    every = {n: list(range(s.job.count)) for n, s in enumerate(scenes) if s.job}
    selected = _selected(scenes, scale_out) if run else every
    if run and selected:  # (a part that selects nothing said so)
        _warn_fewer(scenes, default_parts(scale_out, len(scenes)))
    todo = []
    for n, scene in enumerate(scenes):
        job = scene.job
        if job is None or scene.state == "failed":
            continue
        earlier = None if scale_out.restart else done_summary(job)
        if earlier is not None:
            scene.state, scene.summary = "done earlier", earlier
            continue
        _recover(job)
        if not _check_new(scene, len(scenes) == 1, scale_out.part is not None):
            continue
        lock = _claim(scene, scale_out.part is None, stack, len(scenes) == 1)
        if lock is None:
            continue
        if run:
            if scale_out.part is None:  # a run that ends before a part is finished leaves no parts directory
                stack.callback(_drop_unused, scene)  # (before the lock is released)
            write_json(job.parts_dir / JOB_FILE, job.to_dict())
        todo.extend((scene, i) for i in _todo(scene, lock, selected.get(n, []), scale_out, run))
    return todo


def _placed(job: Job, executor: cf.Executor) -> Job:
    """The job as sent to ``executor``: Ray pins a GPU task to its one GPU, so ``cuda:N`` becomes ``cuda``."""
    if isinstance(executor, RayExecutor) and executor.gpus and job.engine.device.startswith("cuda:"):
        return dataclasses.replace(job, engine=dataclasses.replace(job.engine, device="cuda"))
    return job


def _merge(scene: SceneRun, keep_parts: bool) -> None:
    """Merge a scene whose parts are all finished, and record it as done."""
    job = scene.job
    assert job is not None
    sidecars = [scene.sidecars[i] for i in range(job.count)]
    start = time.perf_counter()
    begin_publishing(job)
    try:
        written = merge_job(job, sidecars)
    except BaseException as exc:  # also a signal: no output of an unfinished merge stays
        take_back(job)
        if not isinstance(exc, LemevitError):
            raise
        scene.fail(f"merge: {exc}")
        return
    scene.summary = job_summary(scene, sidecars, written, time.perf_counter() - start)
    scene.state = "done"
    try:
        mark_done(job, scene.summary, keep_parts)
    except BaseException:  # a signal after the outputs were published: record them (signals are ignored now)
        with contextlib.suppress(Exception):
            mark_done(job, scene.summary, keep_parts)
        raise


def _collect(
    future: cf.Future[dict[str, Any]], scene: SceneRun, i: int, scale_out: ScaleOut, progress: Progress | None
) -> None:
    """Take the sidecar (or the failure) of part ``i`` of ``scene``; merge the scene once its parts are all in."""
    job = scene.job
    assert job is not None
    try:
        scene.sidecars[i] = future.result()
    except Exception as exc:
        scene.fail(f"part {i}/{job.count}: {failure(exc)}")
        return
    scene.ran.append(i)
    if progress:
        progress.advance(_part_tiles(job, i))
    if scale_out.part is None and scene.state == "planned" and len(scene.sidecars) == job.count:
        _merge(scene, scale_out.keep_parts)


def _run_parts(
    executor: cf.Executor, todo: list[tuple[SceneRun, int]], scale_out: ScaleOut, progress: Progress | None
) -> None:
    """Run the parts and collect them as they finish (inline: each as it is submitted, so a scene is merged
    before the next one runs)."""
    inline = is_inline(executor)
    pending: dict[cf.Future[dict[str, Any]], tuple[SceneRun, int]] = {}
    for scene, i in todo:
        assert scene.job is not None
        job = _placed(scene.job, executor)
        future = executor.submit(run_part, job, i, progress if inline else None)
        if inline:  # already done; its tiles were counted as they ran
            _collect(future, scene, i, scale_out, None)
        else:
            pending[future] = (scene, i)
    for future in cf.as_completed(pending):
        _collect(future, *pending[future], scale_out, progress)


def run_scenes(
    scenes: list[SceneRun], scale_out: ScaleOut, progress: Progress | None = None, run: bool = True
) -> dict[str, Any]:
    """Run the parts of every planned scene on the executor ``scale_out`` names, merge them, clean up.

    Without ``run`` (``lemevit-geo merge``) no part runs: a scene with a part missing or failing its check
    fails. Returns the summary: one scene's own summary for a single scene, else every scene's, with
    failures named (``failed``). Finished parts of failed scenes stay for the rerun.
    """
    start = time.perf_counter()
    address = scale_out.executor.split("://", 1)
    if run and len(address) == 2:  # nothing listening there: fail before any parts directory is made
        reach(address[0], address[1], scale_out.connect_timeout)
    with contextlib.ExitStack() as locks:
        todo = _prepare(scenes, scale_out, locks, run)
        if todo:
            if progress:
                progress.start(sum(_part_tiles(s.job, i) for s, i in todo if s.job))
            device = next(s.job.engine.device for s, _ in todo if s.job)
            executor = open_executor(scale_out.executor, device, scale_out.connect_timeout)
            try:
                _run_parts(executor, todo, scale_out, progress)
            finally:
                executor.shutdown(wait=False, cancel_futures=True)
        _finish(scenes, scale_out)
    return scenes_summary(scenes, time.perf_counter() - start)


def _drop_unused(scene: SceneRun) -> None:
    """Remove the parts directory of an unmerged scene that holds no finished part (nothing to resume)."""
    job = scene.job
    if job is not None and scene.state in ("planned", "failed") and job.parts_dir.is_dir():
        if not any(job.sidecar(i).exists() for i in range(job.count)):
            remove_parts(job)


def _finish(scenes: list[SceneRun], scale_out: ScaleOut) -> None:
    """Merge the scenes whose parts are all in (or record this run's share of parts), then remove the parts
    directories if every scene succeeded."""
    for scene in scenes:
        job = scene.job
        if job is None or scene.state != "planned":
            continue
        if scale_out.part is not None:
            scene.state = "parts"
            scene.summary = parts_summary(scene)
        elif len(scene.sidecars) == job.count:
            _merge(scene, scale_out.keep_parts)
    if scale_out.part is None and not scale_out.keep_parts and not any(s.state == "failed" for s in scenes):
        for scene in scenes:
            if scene.job is not None:
                remove_parts(scene.job)


def _merge_target(folder: Path) -> Job:
    """The job of one parts directory for ``lemevit-geo merge``, its ``job.json`` checked."""
    output, folder = parts_dir_of(folder)
    if not folder.is_dir():
        if output.exists():
            raise InputError(f"{output} is already merged (it has no parts directory): {output.absolute()}")
        raise InputError(f"{output} has no parts directory ({folder.name}): run its parts first (`part` i/N)")
    if not (folder / JOB_FILE).exists():
        if (folder / "done.json").exists():
            raise InputError(f"{output} is already merged: {output.absolute()}")
        raise InputError(f"{folder} holds no {JOB_FILE}: run the parts first (`part` i/N)")
    return load_job(folder)


def merge_parts(
    output: Path, overwrite: bool = False, keep_parts: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """``lemevit-geo merge``: join the parts of ``output`` (or of every output in the directory ``output``)
    that array jobs (``part`` ``i/N``) wrote. ``output`` may also name its parts directory."""
    output = Path(output)
    many = output.is_dir() and not output.name.endswith(".parts")
    folders = sorted(p for p in output.glob("*.parts") if p.is_dir()) if many else [output]
    if not folders:
        raise InputError(f"{output} holds no parts directories (*.parts): nothing to merge")
    names = [str(parts_dir_of(folder)[0].absolute()) for folder in folders]
    scenes = plan_scenes(names, lambda i: _merge_target(folders[i]), not many)
    for scene in scenes:
        if scene.job is not None:
            scene.job = dataclasses.replace(scene.job, overwrite=scene.job.overwrite or overwrite)
    return run_scenes(scenes, ScaleOut(keep_parts=keep_parts), progress, run=False)


def job_summary(
    scene: SceneRun, sidecars: Sequence[dict[str, Any]], written: dict[str, Any], merge_seconds: float
) -> dict[str, Any]:
    """The summary of a merged scene: the single-process fields, plus its parts and the merge time."""
    job = scene.job
    assert job is not None
    total = {k: sum(s[k] for s in sidecars) for k in ("tiles", "tiles_run", "tiles_skipped_nodata", "halo_tiles_run")}
    key = COUNT_KEYS.get(job.task, "class_pixels")
    parts = [
        {
            "part": i,
            "tile_rows": [s["strip"]["first"], s["strip"]["stop"]],
            "halo_rows": s["strip"]["first"] - s["strip"]["halo"],
            "rows": [s["strip"]["y0"], s["strip"]["y1"]],
            "status": "run" if i in scene.ran else "reused",
            "seconds": s["seconds"],
            "host": s["host"],
            "device": s["device"],
        }
        for i, s in enumerate(sidecars)
    ]
    return {
        "input": job.name,
        **total,
        "tile_size": job.tile,
        "overlap": job.overlap,
        "width": job.grid.width,
        "height": job.grid.height,
        "precision": sidecars[0]["precision"],
        "batch_size": job.engine.batch_size,
        "parts": parts,
        "part_seconds": round(sum(s["seconds"] for s in sidecars), 3),
        "merge_seconds": round(merge_seconds, 3),
        "outputs": written,
        key: counts(job, sidecars),
        **job.report,
    }


def parts_summary(scene: SceneRun) -> dict[str, Any]:
    """What a run of some parts (``part`` ``i/N``) of a scene did."""
    job = scene.job
    assert job is not None
    return {
        "input": job.name,
        "parts_dir": str(job.parts_dir),
        "parts_run": sorted(scene.ran),
        "parts_finished": sorted(scene.sidecars),
        "parts": job.count,
        "coverage": [
            {
                "part": i,
                "tile_rows": [s.first, s.stop],
                "halo_rows": s.first - s.halo,
                "rows": [s.y0, s.y1],
                "status": "run" if i in scene.ran else "finished" if i in scene.sidecars else "not run",
            }
            for i, s in enumerate(job.strips)
        ],
    }


def scenes_summary(scenes: list[SceneRun], seconds: float) -> dict[str, Any]:
    """One scene's summary (with its state), or all of them with counts; failures under ``failed``."""
    failed = {s.name: s.error or "failed" for s in scenes if s.state == "failed"}
    if len(scenes) == 1:
        return {"state": scenes[0].state, **scenes[0].summary, "failed": failed, "seconds": round(seconds, 3)}
    listed = [
        {"input": s.name, "state": s.state, **({"error": s.error} if s.error else {}), **s.summary} for s in scenes
    ]
    states = [s.state for s in scenes]
    return {
        "scenes": listed,
        "done": states.count("done") + states.count("done earlier"),
        "failed": failed,
        "seconds": round(seconds, 3),
    }


def check_failures(summary: dict[str, Any]) -> None:
    """Raise one error naming every failed scene of a summary (after it was printed)."""
    failed: dict[str, str] = summary.get("failed") or {}
    if not failed:
        return
    if "scenes" not in summary:  # one scene: its message (which names the file where it can)
        name, error = next(iter(failed.items()))
        raise LemevitError(error if name in error else f"{name}: {error}")
    names = "; ".join(f"{name}: {error}" for name, error in failed.items())
    raise LemevitError(f"{len(failed)} of {len(summary['scenes'])} scenes failed: {names}")


def _per_scene(folder: Path | None, inputs: Sequence[str], suffix: str) -> list[Path | None]:
    return list(outputs_in(folder, inputs, suffix)) if folder is not None else [None] * len(inputs)


def _scale_scenes(
    planner: Callable[..., Plan],
    inputs: Sequence[str],
    single: bool,
    targets: Sequence[dict[str, Any]],
    scale_out: ScaleOut,
    progress: Progress | None,
    **options: Any,
) -> dict[str, Any]:
    """Plan scene ``i`` with ``planner(image=inputs[i], **targets[i], **options)``, its existing outputs checked
    at the merge (``defer_existing``), and run every scene through parts."""
    parts = default_parts(scale_out, len(inputs))

    def plan(i: int) -> Job:
        return plan_job(planner(image=inputs[i], defer_existing=True, **targets[i], **options), parts)

    return run_scenes(plan_scenes(inputs, plan, single), scale_out, progress)


def single_output(inputs: Sequence[str], output: str | Path) -> bool:
    """Whether ``output`` names one file (one input), rather than a directory for one output per input."""
    return len(inputs) == 1 and not Path(output).is_dir() and not str(output).endswith(("/", os.sep))


def scale_segment(
    *,
    images: Sequence[str | Path],
    output: str | Path,
    model: str | Path,
    scale_out: ScaleOut,
    outputs: DenseOutputs = DenseOutputs(),
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``segment`` of one or many scenes through parts; ``options`` as for
    :func:`~lemevit_geo.pipelines.inference.segment.plan_segment`.

    With several inputs (or ``output`` a directory) ``output``, ``outputs.probabilities`` and
    ``outputs.vector`` name directories, and each scene writes ``<stem>.tif``, ``<stem>.probabilities.tif``
    and ``<stem>.gpkg`` there.
    """
    inputs = expand_inputs(images)
    single = single_output(inputs, output)
    if single:
        targets = [{"output": Path(output), "outputs": outputs}]
    else:
        mains = outputs_in(Path(output), inputs, ".tif")
        probs = _per_scene(outputs.probabilities, inputs, ".probabilities.tif")
        vectors = _per_scene(outputs.vector, inputs, ".gpkg")
        targets = [
            {"output": main, "outputs": dataclasses.replace(outputs, probabilities=p, vector=v)}
            for main, p, v in zip(mains, probs, vectors, strict=True)
        ]
    return _scale_scenes(plan_segment, inputs, single, targets, scale_out, progress, model=model, **options)


def scale_change(*, scale_out: ScaleOut, progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """``change`` of one pair through parts; ``options`` as for
    :func:`~lemevit_geo.pipelines.inference.change.plan_change`."""
    parts = default_parts(scale_out, 1)
    name = f"{options['before']} + {options['after']}"

    def plan(_: int) -> Job:
        return plan_job(plan_change(defer_existing=True, **options), parts)

    return run_scenes(plan_scenes([name], plan, True), scale_out, progress)


def scale_classify(
    *,
    images: Sequence[str | Path],
    output: str | Path,
    model: str | Path,
    scale_out: ScaleOut,
    raster: str | Path | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``classify`` of one or many scenes through parts; ``options`` as for
    :func:`~lemevit_geo.pipelines.inference.classify.plan_classify`.

    With several inputs (or ``output`` a directory) ``output`` and ``raster`` name directories, and each
    scene writes ``<stem>.gpkg`` and ``<stem>.tif`` there.
    """
    inputs = expand_inputs(images)
    single = single_output(inputs, output)
    if single:
        targets = [{"output": Path(output), "raster": Path(raster) if raster else None}]
    else:
        rasters = _per_scene(Path(raster) if raster else None, inputs, ".tif")
        mains = outputs_in(Path(output), inputs, ".gpkg")
        targets = [{"output": main, "raster": r} for main, r in zip(mains, rasters, strict=True)]
    return _scale_scenes(plan_classify, inputs, single, targets, scale_out, progress, model=model, **options)


def scale_detect(
    *,
    images: Sequence[str | Path],
    output: str | Path,
    model: str | Path,
    scale_out: ScaleOut,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``detect`` of one or many scenes, in ``parts`` strips each (default one, or N for one scene run as part
    i/N); ``options`` as for :func:`~lemevit_geo.pipelines.inference.detect.plan_detect`.

    With several inputs (or ``output`` a directory) ``output`` names a directory, and each scene writes
    ``<stem>.gpkg`` there.
    """
    inputs = expand_inputs(images)
    single = single_output(inputs, output)
    targets = [Path(output)] if single else outputs_in(Path(output), inputs, ".gpkg")
    outputs = [{"output": target} for target in targets]
    return _scale_scenes(plan_detect, inputs, single, outputs, scale_out, progress, model=model, **options)
