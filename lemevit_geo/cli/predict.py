"""Inference commands: ``segment``, ``change``, ``classify``, ``detect`` and ``merge``: parse, call the pipeline, print.

Without scale-out options and with one input, a command runs in this process exactly as it always has;
with several inputs or any scale-out option (``--executor``, ``--parts``, ``--part``, ...) it runs as
parts and a merge (``pipelines/scaleout/driver.py``).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from lemevit_geo import options as o
from lemevit_geo.cli.app import app
from lemevit_geo.cli.display import print_json, report, tile_progress
from lemevit_geo.options import Display, Prediction, grouped
from lemevit_geo.settings import CLASSIFY_ENGINE, DenseOutputs, Detection, Engine, ScaleOut, Sources, Tiling


def predict_groups(**settings: Any) -> dict[str, Any]:
    """The option groups of an inference command: the :class:`Prediction` first, then the command's own
    ``settings`` groups, then scale-out, sources and display."""
    return dict(prediction=Prediction, **settings, scale_out=ScaleOut(), sources=Sources(), display=Display())


#: The option groups of the dense commands (``segment``, ``change``).
DENSE_GROUPS: dict[str, Any] = predict_groups(engine=Engine(), tiling=Tiling(), outputs=DenseOutputs())


def reporting(
    report_path: Path | None,
    task: str,
    inputs: list[Path],
    model: Path,
    overwrite: bool,
    scale_out: ScaleOut = ScaleOut(),
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """A wrapper that runs a pipeline, then writes its HTML map report to ``report_path`` (checked now, before
    any work) and names it in the summary's outputs; no wrapper where no report is asked for."""
    if report_path is None:
        return lambda pipeline: pipeline
    from lemevit_geo.pipelines.report.runs import check_report_run, command_report

    scenes = check_report_run(report_path, task, overwrite, inputs, model, scale_out)
    command_line = shlex.join(["lemevit-geo", *sys.argv[1:]])

    def wrap(pipeline: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def run(**kwargs: Any) -> dict[str, Any]:
            summary = pipeline(**kwargs)
            if "outputs" not in summary:  # a failed scale-out scene: its error is reported, no page
                return summary
            options = dict(inputs=scenes, bundle=model, command_line=command_line, overwrite=overwrite)
            command_report(task=task, path=report_path, summary=summary, **options)
            summary["outputs"]["report"] = str(report_path)
            return summary

        return run

    return wrap


def run_with_progress(pipeline: Callable[..., dict[str, Any]], display: Display, **kwargs: Any) -> None:
    """Run an inference pipeline under a tile progress bar and print its summary."""
    with tile_progress(display) as progress:
        summary = pipeline(progress=progress, **kwargs)
    report(summary, display)


def run_scaled(pipeline: Callable[..., dict[str, Any]], display: Display, **kwargs: Any) -> None:
    """Run a scale-out pipeline like :func:`run_with_progress`; a run with failed scenes prints no table (the
    JSON summary with ``--json``), takes the progress bar down and fails (exit 1) with one line naming them."""
    from lemevit_geo.pipelines.scaleout.driver import check_failures

    with tile_progress(display) as progress:
        summary = pipeline(progress=progress, **kwargs)
        if summary.get("failed"):
            if display.json:
                print_json(summary)
            check_failures(summary)
    report(summary, display)


def run_images(
    task: str,
    single: Callable[..., dict[str, Any]],
    scaled: Callable[..., dict[str, Any]],
    images: list[str] | None,
    output: Path,
    *,
    prediction: Prediction,
    scale_out: ScaleOut,
    sources: Sources,
    display: Display,
    **options: Any,
) -> None:
    """Run ``single`` in this process on one input to one output without scale-out, else ``scaled`` on them all
    (the inputs: ``images`` or what ``sources`` finds, with its area and assets) with the ``prediction`` and
    ``options`` (the command's own options and settings groups), and write the map report of a ``task`` run
    when the ``prediction`` asks for one."""
    from lemevit_geo.pipelines.scaleout.driver import expand_inputs, single_output

    if not images and not sources.stac:
        raise typer.BadParameter("give at least one image, or --stac to search a catalogue", param_hint="IMAGE...")
    images = sources.resolve(images)
    wrap = reporting(prediction.report, task, images, prediction.model, prediction.overwrite, scale_out)
    single, scaled = wrap(single), wrap(scaled)
    options.update(prediction.keywords())
    inputs = expand_inputs(images)
    if single_output(inputs, output) and not scale_out.used:
        run_with_progress(single, display, image=inputs[0], output=output, **options)
    else:
        run_scaled(scaled, display, images=images, output=output, scale_out=scale_out, **options)


@app.command()
@grouped(**DENSE_GROUPS)
def segment(
    images: o.Images = None,
    *,
    output: o.Output,
    **groups: Any,
) -> None:
    """Semantic segmentation: a class raster on exactly the scene's grid (and polygons).

    Several inputs (or -o DIR): DIR/<name>.tif each; --probabilities and --vector then name directories.
    """
    from lemevit_geo.pipelines.inference.segment import segment as run
    from lemevit_geo.pipelines.scaleout.driver import scale_segment

    run_images("segment", run, scale_segment, images, output, **groups)


@app.command()
@grouped(**DENSE_GROUPS)
def change(
    before: o.Before,
    after: o.After,
    output: o.Output,
    *,
    prediction: Prediction,
    engine: Engine,
    tiling: Tiling,
    outputs: DenseOutputs,
    scale_out: ScaleOut,
    sources: Sources,
    display: Display,
) -> None:
    """Bitemporal change detection: a change raster on the earlier image's grid, over the overlap."""
    from lemevit_geo.pipelines.inference.change import change as run
    from lemevit_geo.pipelines.scaleout.driver import scale_change

    before, after = sources.resolve([before, after], count=2)
    options: dict[str, Any] = {"scale_out": scale_out} if scale_out.used else {}
    options.update(prediction.keywords(), engine=engine, tiling=tiling, outputs=outputs)
    wrap = reporting(prediction.report, "change", [before, after], prediction.model, prediction.overwrite, scale_out)
    (run_scaled if scale_out.used else run_with_progress)(
        wrap(scale_change if scale_out.used else run), display, before=before, after=after, output=output, **options
    )


@app.command()
@grouped(**predict_groups(engine=CLASSIFY_ENGINE))
def classify(
    images: o.Images = None,
    *,
    output: o.Output,
    tile_size: o.TileSize = None,
    raster: o.GridRaster = None,
    top_k: o.TopK = 3,
    **groups: Any,
) -> None:
    """Scene classification per tile: one polygon per tile with its class, probability and top-k.

    Several inputs (or -o DIR): DIR/<name>.gpkg each; --raster then names a directory.
    """
    from lemevit_geo.pipelines.inference.classify import classify as run
    from lemevit_geo.pipelines.scaleout.driver import scale_classify

    options = dict(tile_size=tile_size, raster=raster, top_k=top_k)
    run_images("classify", run, scale_classify, images, output, **options, **groups)


@app.command()
@grouped(display=Display())
def merge(
    output: o.MergeTarget,
    overwrite: o.Overwrite = False,
    keep_parts: o.KeepParts = False,
    report: o.Report = None,
    *,
    display: Display,
) -> None:
    """Join the parts that array jobs wrote (--part I/N) into the outputs, and remove the parts."""
    from lemevit_geo.pipelines.scaleout.driver import merge_parts

    task, inputs, model = "", [], ""
    if report is not None:  # the job's own task, inputs and bundle, from its job.json
        from lemevit_geo.pipelines.report.runs import merge_inputs

        task, inputs, model = merge_inputs(output)
    wrap = reporting(report, task, [Path(p) for p in inputs], Path(model), overwrite)
    run_scaled(
        wrap(lambda progress: merge_parts(output, overwrite=overwrite, keep_parts=keep_parts, progress=progress)),
        display,
    )


@app.command()
@grouped(**predict_groups(engine=Engine(), detection=Detection()))
def detect(
    images: o.Images = None,
    *,
    output: o.Objects,
    tile_size: o.TileSize = None,
    overlap: o.DetectOverlap = None,
    **groups: Any,
) -> None:
    """Oriented object detection: one rotated rectangle per object, in the scene's CRS, merged across tiles.

    Several inputs (or -o DIR): DIR/<name>.gpkg each, one part per scene.
    """
    from lemevit_geo.pipelines.inference.detect import detect as run
    from lemevit_geo.pipelines.scaleout.driver import scale_detect

    run_images("detect", run, scale_detect, images, output, tile_size=tile_size, overlap=overlap, **groups)
