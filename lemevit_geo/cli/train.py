"""The ``train`` and ``pretrain`` commands: parse, call the training pipelines, print."""

from __future__ import annotations

from pathlib import Path

import typer

from lemevit_geo import options as o
from lemevit_geo.choices import PretrainMethod
from lemevit_geo.cli.app import app, quiet_lightning
from lemevit_geo.cli.display import report, report_baselines
from lemevit_geo.options import Display, grouped
from lemevit_geo.settings import Hardware, PretrainRecipe, Recipe, TrainSpec


def _need_dataset(dataset: str | None, *own: object) -> None:
    """A usage error (exit 2) when neither a dataset nor own data is given: own data implies ``custom``."""
    if dataset is None and not any(own):
        raise typer.BadParameter(
            "name a torchgeo dataset (--root its folder), or give your own data with --images and --labels "
            "(change: --before, --after and --labels)",
            param_hint="'--dataset'",
        )


@app.command()
@grouped(recipe=Recipe(), hardware=Hardware(), display=Display())
def train(
    dataset: o.Dataset = None,
    out: o.BundleOut = Path("model.safetensors"),
    root: o.Root = None,
    images: o.OwnImages = None,
    labels: o.Labels = None,
    before: o.BeforeImages = None,
    after: o.AfterImages = None,
    label_column: o.LabelColumn = None,
    point_size: o.PointSize = None,
    classes: o.Classes = None,
    task: o.OwnTask = None,
    arch: o.ArchOpt = o.Arch.tiny,
    backbone_weights: o.BackboneWeights = None,
    freeze_backbone: o.FreezeBackbone = False,
    tile_size: o.TileSize = None,
    val_fraction: o.ValFraction = 0.2,
    resume: o.Resume = False,
    fast_dev_run: o.FastDevRun = False,
    baseline: o.Baseline = False,
    overwrite: o.Overwrite = False,
    *,
    recipe: Recipe,
    hardware: Hardware,
    display: Display,
) -> None:
    """Train a model on a torchgeo dataset or on your own rasters; writes a bundle.

    The summary puts the best validation metrics next to predicting the majority class (and, with --baseline,
    next to a per-pixel classifier)."""
    fields = {name: value for name, value in locals().items() if name != "display"}  # TrainSpec's, one each
    _need_dataset(dataset, images, labels, before, after)
    from lemevit_geo.pipelines.training.train import train as run

    quiet_lightning()
    summary = run(TrainSpec(**fields), progress=display.progress)
    report(summary, display)
    report_baselines(summary, display)


@app.command()
@grouped(recipe=PretrainRecipe(), hardware=Hardware(), display=Display())
def pretrain(
    images: o.PretrainImages,
    out: o.BackboneOut = Path("backbone.safetensors"),
    method: o.Method = PretrainMethod.simmim,
    arch: o.ArchOpt = o.Arch.tiny,
    tile_size: o.PretrainTile = None,
    resume: o.Resume = False,
    skip_unreadable: o.SkipUnreadable = False,
    overwrite: o.Overwrite = False,
    *,
    recipe: PretrainRecipe,
    hardware: Hardware,
    display: Display,
) -> None:
    """Pretrain a backbone on unlabelled images (self-supervised); use it with train --backbone-weights."""
    fields = {name: value for name, value in locals().items() if name != "display"}  # pretrain()'s, one each
    from lemevit_geo.pipelines.training.pretrain import pretrain as run

    quiet_lightning()
    report(run(**fields, progress=display.progress), display)
