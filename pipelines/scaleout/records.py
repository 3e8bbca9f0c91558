"""The files of a parts directory read back and checked before anything in them is used.

``job.json`` and every sidecar are validated field by field against a schema (pydantic, strict types) and
then against each other and the directory they are in: the output ``job.json`` names must be the one the
parts directory belongs to, the other outputs must lie inside that output's folder, and a part file must
have the size and SHA-256 its sidecar records. A failed check is one line that names the file and the
field. A parts directory copied elsewhere therefore merges into the output beside it, and a tampered
``job.json`` cannot send an output anywhere else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pydantic

from lemevit_geo.choices import Task
from lemevit_geo.errors import InputError, LemevitError
from lemevit_geo.pipelines.inference.stitch import CHUNK
from lemevit_geo.pipelines.inference.tiling import Strip
from lemevit_geo.pipelines.scaleout.jobs import FORMAT, FORMAT_VERSION, Job, file_sha256

JOB_FILE = "job.json"
SUFFIX = ".parts"

_JOB = pydantic.TypeAdapter(Job)


class PartError(InputError):
    """A part file or its sidecar that cannot be trusted (corrupt, truncated, changed)."""


class _Sidecar(pydantic.BaseModel):
    """What a sidecar must hold (``parts.run_part`` writes it); task-specific counts are checked per task."""

    model_config = pydantic.ConfigDict(strict=True, extra="allow")

    format: Literal["lemevit-geo-parts"]
    format_version: int
    parts_hash: str
    index: int = pydantic.Field(ge=0)
    count: int = pydantic.Field(ge=1)
    file: str
    file_size: int = pydantic.Field(ge=0)
    file_sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")
    strip: Strip
    tiles: int = pydantic.Field(ge=0)
    tiles_run: int = pydantic.Field(ge=0)
    tiles_skipped_nodata: int = pydantic.Field(ge=0)
    halo_tiles: int = pydantic.Field(ge=0)
    halo_tiles_run: int = pydantic.Field(ge=0)
    seconds: float = pydantic.Field(ge=0)
    host: str
    device: str
    precision: str
    bands: list[tuple[int, int, list[int]]] | None = None
    class_pixels: list[pydantic.NonNegativeInt] | None = None
    class_tiles: dict[str, pydantic.NonNegativeInt] | None = None
    class_objects: dict[str, pydantic.NonNegativeInt] | None = None


def _field(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field name: ``strips[0].first``."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _invalid(path: Path, exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{path}: field {_field(tuple(error['loc']))!r}: {message}"


def _load(path: Path, what: str, error: type[InputError] = InputError) -> tuple[str, dict[str, Any]]:
    """The text of a JSON file and its object; corrupt JSON and wrong formats as one ``error`` line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"{path} cannot be read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise error(f"{path} is corrupt (not JSON: {exc}){what}") from exc
    if not isinstance(data, dict):
        raise error(f"{path} is corrupt (not a JSON object){what}")
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        found = f"{data.get('format')!r} version {data.get('format_version')!r}"
        raise error(f"{path}: field 'format': {found} is not {FORMAT!r} version {FORMAT_VERSION}{what}")
    return text, data


def parts_dir_of(path: Path) -> tuple[Path, Path]:
    """The output and the parts directory that ``path`` (either of them) names."""
    if path.name.endswith(SUFFIX) and len(path.name) > len(SUFFIX):
        return path.with_name(path.name[: -len(SUFFIX)]), path
    return path, path.with_name(path.name + SUFFIX)


def _inside(path: Path | None, folder: Path, file: Path, name: str) -> Path | None:
    """A path from ``job.json`` (relative, without ``..``) resolved in ``folder``; anything else refused."""
    if path is None:
        return None
    if path.is_absolute() or ".." in PurePosixPath(path.as_posix()).parts or not path.parts:
        raise InputError(
            f"{file}: field {name!r}: {str(path)!r} is not a path inside {folder}: "
            "a merge writes only beside the output it was asked for"
        )
    return folder / path


def _check_output(job: Job, folder: Path, file: Path) -> None:
    """The output ``job.json`` names must be the one this parts directory belongs to."""
    output, _ = parts_dir_of(folder)
    if job.output.is_absolute() or len(job.output.parts) != 1:
        raise InputError(f"{file}: field 'output': {str(job.output)!r} is not the name of an output beside {folder}")
    if job.output.name != output.name:
        raise InputError(
            f"{file}: field 'output': names {job.output.name}, but {folder.name} holds the parts of {output.name}"
        )


def _check_layout(job: Job, file: Path) -> None:
    """Strips that tile the grid top to bottom, colours per class, skipped classes that exist."""
    if not job.strips:
        raise InputError(f"{file}: field 'strips': no parts")
    y = 0
    for i, s in enumerate(job.strips):
        if not (0 <= s.halo <= s.first < s.stop and s.y0 == y < s.y1 <= job.grid.height):
            raise InputError(f"{file}: field 'strips[{i}]': {s} does not continue the strips before it")
        y = s.y1
    if y != job.grid.height:
        raise InputError(f"{file}: field 'strips': they end at row {y}, the grid has {job.grid.height}")
    if min(job.grid.width, job.grid.height, job.tile) < 1 or job.overlap < 0 or not job.classes:
        raise InputError(f"{file}: field 'grid': an empty grid, tile or class list")
    if len(job.colors) != len(job.classes):
        raise InputError(f"{file}: field 'colors': {len(job.colors)} colours for {len(job.classes)} classes")
    if any(not 0 <= c < len(job.classes) for c in job.vector_skip):
        raise InputError(f"{file}: field 'vector_skip': a class outside 0..{len(job.classes) - 1}")


def load_job(folder: Path) -> Job:
    """The job of the parts directory ``folder``, checked field by field, with its paths resolved there."""
    folder = folder.absolute()
    file = folder / JOB_FILE
    text, _ = _load(file, ": run the parts again, or remove the directory")
    try:
        job = _JOB.validate_json(text, strict=True)
    except pydantic.ValidationError as exc:
        raise InputError(_invalid(file, exc)) from None
    except LemevitError as exc:  # a setting's own check (``Engine``, ``DenseOutputs``)
        raise InputError(f"{file}: {str(exc).replace('`', '')}") from None
    _check_output(job, folder, file)
    _check_layout(job, file)
    beside = folder.parent
    outputs = dataclasses.replace(
        job.outputs,
        probabilities=_inside(job.outputs.probabilities, beside, file, "outputs.probabilities"),
        vector=_inside(job.outputs.vector, beside, file, "outputs.vector"),
    )
    raster = _inside(job.raster, beside, file, "raster")
    return dataclasses.replace(job, output=beside / job.output.name, outputs=outputs, raster=raster)


def _check_counts(job: Job, index: int, side: _Sidecar, file: Path) -> None:
    """The task's counts and (dense tasks) the bands a merge replays, inside the part's strip."""
    key = {Task.classify: "class_tiles", Task.detect: "class_objects"}.get(job.task, "class_pixels")
    counts = getattr(side, key)
    if counts is None or (key == "class_pixels" and len(counts) != len(job.classes)):
        raise PartError(f"{file}: field {key!r}: missing, or not one count per class of the job")
    if job.task not in (Task.segment, Task.change):
        return
    if side.bands is None:
        raise PartError(f"{file}: field 'bands': missing")
    strip, chunks = job.strips[index], -(-job.grid.width // CHUNK)
    for i, (row, height, columns) in enumerate(side.bands):
        if not (strip.y0 <= row and height >= 1 and row + height <= strip.y1) or not all(
            0 <= c < chunks for c in columns
        ):
            raise PartError(f"{file}: field 'bands[{i}]': rows or column chunks outside the part's strip")


def _check_identity(job: Job, index: int, side: _Sidecar, file: Path) -> None:
    """The sidecar must describe this part of this job: its index, count, file name and strip."""
    found = {
        "index": (side.index, index),
        "count": (side.count, job.count),
        "file": (side.file, job.part_file(index).name),
        "strip": (side.strip, job.strips[index]),
    }
    for name, (value, want) in found.items():
        if value != want:
            raise PartError(f"{file}: field {name!r}: {value!r} where part {index}/{job.count} has {want!r}")


def _check_file(job: Job, index: int, side: _Sidecar, file: Path) -> dict[str, Any]:
    """The part file must be the one the sidecar describes: size and SHA-256."""
    part = job.part_file(index)
    try:
        size = part.stat().st_size
    except OSError as exc:
        raise PartError(f"{part}: {exc.strerror or exc}, though {file.name} says the part is finished") from exc
    if size != side.file_size:
        raise PartError(f"{part}: {size} bytes where {file.name} records {side.file_size}: truncated or changed")
    if file_sha256(part) != side.file_sha256:
        raise PartError(f"{part}: its SHA-256 is not the one {file.name} records: the part was changed")
    return side.model_dump(mode="json")


def check_part(job: Job, index: int) -> dict[str, Any] | None:
    """The sidecar of part ``index`` if the part is finished for this job and its file checks out.

    None if the part is not finished (no sidecar, or one of another job: it runs again);
    :class:`PartError` naming the file and field if the sidecar or the part file cannot be trusted.
    """
    file = job.sidecar(index)
    if not file.exists():
        return None
    text, data = _load(file, "", PartError)
    if data.get("parts_hash") != job.parts_hash:
        return None
    try:
        side = _Sidecar.model_validate_json(text)
    except pydantic.ValidationError as exc:
        raise PartError(_invalid(file, exc)) from None
    _check_identity(job, index, side, file)
    _check_counts(job, index, side, file)
    return _check_file(job, index, side, file)
