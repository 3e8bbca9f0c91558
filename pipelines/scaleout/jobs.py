"""Scale-out jobs: one scene's work split into parts, what each part and the merge need, and the files that
record it in the scene's parts directory.

A :class:`Job` is planned once by the driver (the command's :class:`~lemevit_geo.pipelines.inference.plan.Plan`
in strips: :func:`plan_job`) and sent as it is to every worker; it holds plain values only (paths, numbers,
WKT), so it pickles for Ray and Dask and is written to ``job.json`` for ``lemevit-geo merge``. Two hashes
decide what a rerun may reuse:

- ``parts_hash`` covers everything that changes the bytes of a part file: the tool version, the task, the
  bundle file's SHA-256, the inputs (path, size, modification time), bands, tiling, the strips, device
  type, precision and batch size, and which optional layers the parts hold.
- ``job_hash`` adds what only the merge uses: output paths, polygon options, COG.

The parts directory of an output ``mask.tif`` is ``mask.tif.parts/``: ``job.json``, then per part a part
file (``part-00000-of-00004.tif``, numbered from 0 like ``part`` ``i/N``; ``.parquet`` for ``classify``)
and its sidecar (``.json``, written last: a part is finished when its sidecar names the job's
``parts_hash`` and the part file has the size and SHA-256 the sidecar records; see
:mod:`~lemevit_geo.pipelines.scaleout.records`), and the ``lock`` of
:mod:`~lemevit_geo.pipelines.scaleout.locks`. After a merge the part files give way
to ``done.json`` and ``summary.json``; the whole directory is removed when the command succeeds for every
scene.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from affine import Affine
from rasterio.crs import CRS

from lemevit_geo import __version__
from lemevit_geo.choices import Task
from lemevit_geo.errors import InputError
from lemevit_geo.inputs import local_file
from lemevit_geo.outputs import temporary_sibling
from lemevit_geo.pipelines.inference.detect import box_strips
from lemevit_geo.pipelines.inference.plan import Plan, RunSpec
from lemevit_geo.pipelines.inference.tiling import Strip, strips
from lemevit_geo.pipelines.scaleout.locks import removed_name
from lemevit_geo.raster import SourceInfo

FORMAT = "lemevit-geo-parts"
FORMAT_VERSION = 2


@dataclass(frozen=True)
class GridSpec:
    """An output grid as plain values: size, CRS (WKT, or None for pixel grids) and geotransform."""

    width: int
    height: int
    crs: str | None
    transform: tuple[float, ...]

    @classmethod
    def of(cls, info: SourceInfo) -> GridSpec:
        crs = info.crs.to_wkt() if info.crs is not None else None
        return cls(info.width, info.height, crs, tuple(info.transform)[:6])

    def info(self, path: str = "") -> SourceInfo:
        """The grid as the :class:`~lemevit_geo.raster.SourceInfo` that output profiles are made from."""
        crs = CRS.from_wkt(self.crs) if self.crs else None
        return SourceInfo(path, self.width, self.height, crs, Affine(*self.transform), (1,), "uint8")


@dataclass(frozen=True, kw_only=True)
class Job(RunSpec):
    """One scene (or change pair) run as parts: its plan's :class:`~lemevit_geo.pipelines.inference.plan.RunSpec`
    and what the parts and the merge need besides. See the module docstring for the hashes.

    Attributes:
        model: The bundle path (every worker loads it, and checks its SHA-256 against ``bundle_sha``).
        bundle_sha: SHA-256 of the bundle file.
        grid: The output grid.
        classes: Class names of the bundle, in output order.
        colors: Their colours.
        tile: Tile size (after capping to small scenes).
        overlap: Tile overlap.
        strips: The parts: tile rows each runs and the scene rows each writes.
        report: What the planning found (mask, alignment), repeated in the summary.
        parts_hash: Hash of what changes part files.
        job_hash: Hash of what changes the outputs.
    """

    model: str
    bundle_sha: str
    grid: GridSpec
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    tile: int
    overlap: int
    strips: tuple[Strip, ...]
    report: dict[str, Any] = field(default_factory=dict, compare=False)
    parts_hash: str = ""
    job_hash: str = ""

    @property
    def name(self) -> str:
        """The scene as messages name it."""
        return " + ".join(self.inputs)

    @property
    def parts_dir(self) -> Path:
        return parts_dir(self.output)

    @property
    def count(self) -> int:
        return len(self.strips)

    def part_file(self, index: int) -> Path:
        suffix = ".parquet" if self.task in (Task.classify, Task.detect) else ".tif"
        return self.parts_dir / f"part-{index:05d}-of-{self.count:05d}{suffix}"

    def sidecar(self, index: int) -> Path:
        return self.part_file(index).with_suffix(".json")

    def outputs_written(self) -> list[Path]:
        """Every file the merge publishes."""
        paths = [self.output, self.outputs.probabilities, self.outputs.vector, self.raster]
        return [p for p in paths if p is not None]

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready values (``job.json``): inputs and model resolved, the output by its name (the
        parts directory is named after it) and the other outputs relative to the output's folder, so the
        file means the same from any working directory and names nothing outside that folder."""
        folder = self.output.parent
        outputs = dataclasses.replace(
            self.outputs,
            probabilities=_beside(self.outputs.probabilities, folder),
            vector=_beside(self.outputs.vector, folder),
        )
        resolved = dataclasses.replace(
            self,
            inputs=tuple(_resolved(p) for p in self.inputs),
            model=_resolved(self.model),
            output=Path(self.output.name),
            outputs=outputs,
            raster=_beside(self.raster, folder),
        )
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **plain(resolved)}


def _resolved(path: str) -> str:
    """A local path made absolute (so a worker or a merge elsewhere finds it); URLs and GDAL paths as they are."""
    return path if "://" in path or path.startswith("/vsi") else str(Path(path).resolve())


def _beside(path: Path | None, folder: Path) -> Path | None:
    """``path`` relative to ``folder`` when it lies inside it, else absolute (which a merge refuses)."""
    if path is None:
        return None
    full, base = path.resolve(), folder.resolve()
    return full.relative_to(base) if full.is_relative_to(base) else full


def plain(value: Any) -> Any:
    """``value`` as JSON-ready values: dataclasses as dicts, enums as their values, paths and tuples as
    strings and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(plain(value), sort_keys=True).encode()).hexdigest()


def input_stat(path: str) -> list[Any]:
    """What identifies an input's content cheaply: its resolved path, size and modification time (and the
    options it carries, such as a ``bbox``); a remote input is its string (a changed remote file is not seen)."""
    local = local_file(path)
    if local is None or str(local).startswith("/vsi"):
        return [path]
    st = os.stat(local)
    stamp = [str(local.resolve()), st.st_size, st.st_mtime_ns]
    return stamp if str(local) == path else [*stamp, path]


def seal(job: Job) -> Job:
    """``job`` with its two hashes (see the module docstring)."""
    engine = job.engine
    parts = {
        "version": __version__,
        "task": job.task,
        "inputs": [input_stat(p) for p in job.inputs],
        "bundle_sha": job.bundle_sha,
        "grid": job.grid,
        "tiling": [job.tile, job.overlap, job.stitch],
        "strips": job.strips,
        "engine": [engine.device.split(":")[0], engine.precision, engine.batch_size],
        "bands": job.bands,
        "allow_pixel_grid": job.allow_pixel_grid,
        "probabilities": job.outputs.probabilities is not None,
        "top_k": job.top_k,
        "detection": job.detection,
    }
    parts_hash = _digest(parts)
    targets = (job.output, job.outputs.probabilities, job.outputs.vector, job.raster)
    where = [p.absolute() if p else None for p in targets]  # the same from any working directory
    merge = [parts_hash, where, dataclasses.replace(job.outputs, probabilities=None, vector=None), job.vector_skip]
    return dataclasses.replace(job, parts_hash=parts_hash, job_hash=_digest(merge))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


_SHAS: dict[tuple[str, int, int], str] = {}


def bundle_sha(path: str | Path) -> str:
    """SHA-256 of a bundle file, computed once per command for each file (by path, size and time)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHAS:
        _SHAS[key] = file_sha256(path)
    return _SHAS[key]


def plan_job(plan: Plan, parts: int) -> Job:
    """The scale-out job of ``plan`` (made with ``defer_existing``) in ``parts`` strips, sealed with its hashes.

    A ``detect`` strip owns the objects centred in its rows and runs a halo of tile rows that holds them and the
    boxes that decide their fate (:func:`~lemevit_geo.pipelines.inference.detect.box_strips`).
    """
    if plan.bundle is None:
        raise InputError("scale-out runs load the model in each worker: pass a bundle path as `model`")
    cut = box_strips(plan.grid, parts) if plan.task is Task.detect else strips(plan.grid, parts, plan.stitch)
    job = Job(
        model=str(plan.model),
        bundle_sha=bundle_sha(plan.bundle),
        grid=GridSpec.of(plan.info),
        classes=tuple(plan.config.classes),
        colors=tuple(plan.config.colors),
        tile=plan.grid.tile,
        overlap=plan.grid.overlap,
        strips=tuple(cut),
        report=plan.report,
        **{f.name: getattr(plan, f.name) for f in dataclasses.fields(RunSpec)},
    )
    return seal(job)


def parts_dir(output: Path) -> Path:
    """The directory that holds the parts of ``output``: ``<output>.parts`` beside it."""
    return output.with_name(f"{output.name}.parts")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(json.dumps(plain(data), indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stamps(paths: list[Path]) -> list[list[Any]]:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


#: The outputs a merge is making that did not exist before it (taken back if it does not finish).
JOURNAL = "publishing.json"


def begin_publishing(job: Job) -> None:
    """Record the outputs of ``job`` that do not exist yet, before a merge makes them."""
    new = [str(p.absolute()) for p in job.outputs_written() if not p.exists()]
    write_json(job.parts_dir / JOURNAL, {"job_hash": job.job_hash, "outputs": new})


def take_back(job: Job, stale: bool = False) -> bool:
    """Remove what an unfinished merge of ``job`` published of the outputs it recorded as new (this run's merge,
    or with ``stale`` an earlier one that was killed: outputs made after the record); True if any was removed.

    Only the job's own outputs are touched, whatever the record says.
    """
    journal = job.parts_dir / JOURNAL
    record = read_json(journal) or {}
    try:
        since = journal.stat().st_mtime_ns if stale else 0
    except OSError:
        return False
    listed = set(record.get("outputs") or []) if record.get("job_hash") == job.job_hash else set()
    removed = False
    for path in job.outputs_written():
        try:
            if str(path.absolute()) in listed and path.stat().st_mtime_ns >= since:
                path.unlink()
                Path(f"{path}.aux.xml").unlink(missing_ok=True)
                removed = True
        except OSError:
            continue
    journal.unlink(missing_ok=True)
    return removed


def mark_done(job: Job, summary: dict[str, Any], keep_parts: bool) -> None:
    """Record that ``job`` was merged (``done.json``), and remove its part files unless ``keep_parts``."""
    write_json(job.parts_dir / "done.json", {"job_hash": job.job_hash, "outputs": _stamps(job.outputs_written())})
    (job.parts_dir / JOURNAL).unlink(missing_ok=True)
    write_json(job.parts_dir / "summary.json", summary)
    if not keep_parts:
        for i in range(job.count):
            job.part_file(i).unlink(missing_ok=True)
            job.sidecar(i).unlink(missing_ok=True)


def done_summary(job: Job) -> dict[str, Any] | None:
    """The summary of an earlier merge of this very job whose outputs are still as it left them, else None."""
    done = read_json(job.parts_dir / "done.json")
    if not done or done.get("job_hash") != job.job_hash:
        return None
    try:
        if done.get("outputs") != _stamps(job.outputs_written()):
            return None
    except OSError:
        return None
    return read_json(job.parts_dir / "summary.json") or {}


def remove_parts(job: Job) -> None:
    """Remove the parts directory of ``job`` (after the command succeeded): renamed to a temporary name first,
    so an interrupted removal leaves a temporary (swept by the next run), not a half parts directory."""
    gone = removed_name(job.parts_dir)
    try:
        os.replace(job.parts_dir, gone)
    except OSError:
        gone = job.parts_dir
    shutil.rmtree(gone, ignore_errors=True)
