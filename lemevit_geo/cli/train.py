"""The ``train`` and ``pretrain`` commands: parse, call the training pipelines, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lemevit_geo import options as o
from lemevit_geo.choices import PretrainMethod
from lemevit_geo.cli.app import app, quiet_lightning
from lemevit_geo.cli.display import report, report_baselines
from lemevit_geo.options import Display, grouped
from lemevit_geo.settings import Hardware, PretrainRecipe, Recipe, TrainSpec

Dataset = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="potsdam, vaihingen, loveda, levircd, oscd, ucmerced, resisc45, millionaid, dota or custom "
        "(the default with --images, --labels, --before or --after).",
        show_default=False,
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Bundle to write (.safetensors).")]
Root = Annotated[Path | None, typer.Option("--root", help="Folder of a torchgeo dataset.")]
Images = Annotated[list[str] | None, typer.Option("--images", help="Own images: paths or globs.")]
Labels = Annotated[
    list[str] | None, typer.Option("--labels", help="Label rasters, or a vector file (with --label-column).")
]
BeforeImages = Annotated[list[str] | None, typer.Option("--before", help="Own earlier images (change).")]
AfterImages = Annotated[list[str] | None, typer.Option("--after", help="Own later images (change).")]
LabelColumn = Annotated[
    str | None,
    typer.Option("--label-column", help="Class column of vector labels (detection default: class_name or class)."),
]
PointSize = Annotated[
    float | None,
    typer.Option("--point-size", help="Detection: point labels become square boxes of this side (map units)."),
]
OwnTask = Annotated[
    o.Task | None,
    typer.Option(
        "--task",
        help="Own data only: classify trains scene labels (tile majority); detect an oriented detector from polygons.",
    ),
]
BackboneWeights = Annotated[
    Path | None,
    typer.Option("--backbone-weights", help="Backbone to start from: `pretrain` output or official .pth checkpoint."),
]
FreezeBackbone = Annotated[
    bool, typer.Option("--freeze-backbone", help="Train only the decoder and head (or the classifier).")
]
ValFraction = Annotated[float, typer.Option("--val-fraction", help="Share of own data's area kept for validation.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this --out.")]
FastDevRun = Annotated[bool, typer.Option("--fast-dev-run", help="One batch of training and validation.")]
Baseline = Annotated[
    bool,
    typer.Option(
        "--baseline", help="Also score a per-pixel gradient-boosting classifier on the same split (scikit-learn)."
    ),
]
PretrainImages = Annotated[list[str], typer.Option("--images", help="Unlabelled images: paths or globs.")]
BackboneOut = Annotated[Path, typer.Option("--out", "-o", help="Backbone to write (.safetensors).")]
Method = Annotated[
    PretrainMethod, typer.Option("--method", help="Masked image modelling, or torchgeo's SimCLR / MoCo v3.")
]
PretrainTile = Annotated[
    int | None, typer.Option("--tile-size", help="Tile side in pixels (default 128, capped to the images).")
]
PretrainResume = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this --out.")]
SkipUnreadable = Annotated[
    bool, typer.Option("--skip-unreadable", help="Leave out images that cannot be read (listed in a warning).")
]


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
    dataset: Dataset = None,
    out: Out = Path("model.safetensors"),
    root: Root = None,
    images: Images = None,
    labels: Labels = None,
    before: BeforeImages = None,
    after: AfterImages = None,
    label_column: LabelColumn = None,
    point_size: PointSize = None,
    classes: o.Classes = None,
    task: OwnTask = None,
    arch: o.ArchOpt = o.Arch.tiny,
    backbone_weights: BackboneWeights = None,
    freeze_backbone: FreezeBackbone = False,
    tile_size: o.TileSize = None,
    val_fraction: ValFraction = 0.2,
    resume: Resume = False,
    fast_dev_run: FastDevRun = False,
    baseline: Baseline = False,
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
    images: PretrainImages,
    out: BackboneOut = Path("backbone.safetensors"),
    method: Method = PretrainMethod.simmim,
    arch: o.ArchOpt = o.Arch.tiny,
    tile_size: PretrainTile = None,
    resume: PretrainResume = False,
    skip_unreadable: SkipUnreadable = False,
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
