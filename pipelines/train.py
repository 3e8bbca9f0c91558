"""Training: data, Lightning module, trainer, bundle.

``train(dataset="potsdam", root=...)`` trains on a torchgeo dataset through its datamodule;
``train(dataset="custom", images=..., labels=...)`` (segmentation) or ``before/after/labels`` (change)
trains on the user's GeoTIFFs (:mod:`lemevit_geo.pipelines.data`). The result is a bundle that
``segment`` / ``change`` / ``classify`` use as is, the best checkpoint, and a CSV of per-epoch metrics.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lemevit_geo.bundle import DEFAULT_TILE, BundleConfig, save_bundle
from lemevit_geo.choices import Arch, Precision, Task
from lemevit_geo.device import cpu_supports_bf16
from lemevit_geo.errors import InputError
from lemevit_geo.models.factory import head_options
from lemevit_geo.outputs import check_output
from lemevit_geo.pipelines.callbacks import EpochCSV
from lemevit_geo.pipelines.data import DATASETS, TrainData, custom_data, detection_data, torchgeo_data
from lemevit_geo.pipelines.tasks import TASK_MODULES, LeMeViTTask
from lemevit_geo.settings import Hardware, Recipe, check_tile_size


def lightning_precision(precision: Precision | str) -> str:
    """Lightning's precision string for ours (auto: bf16-mixed where the hardware runs bf16 fast)."""
    precision = Precision(precision)
    if precision == Precision.auto:
        if torch.cuda.is_available():
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "bf16-mixed" if cpu_supports_bf16() else "32-true"
    return {Precision.fp32: "32-true", Precision.bf16: "bf16-mixed", Precision.fp16: "16-mixed"}[precision]


def load_data(
    *,
    name: str,
    root: str | Path | None,
    own: dict[str, Any],
    task: Task | str | None,
    tile_size: int | None,
    val_fraction: float,
    recipe: Recipe,
    hardware: Hardware,
    work_dir: Path,
) -> tuple[TrainData, int]:
    """The training data of a torchgeo dataset (``name``) or of own rasters (``own``), and the tile size."""
    if name != "custom":
        if name not in DATASETS:
            raise InputError(f"unknown dataset {name!r}; choose one of custom, {', '.join(DATASETS)}")
        if root is None:
            raise InputError(f"dataset {name} needs `root`, the folder holding it ({DATASETS[name].expects})")
        tile = tile_size or DEFAULT_TILE[DATASETS[name].task]
        return torchgeo_data(name, Path(root), recipe.batch_size, tile, hardware.num_workers), tile
    wanted = Task(task) if task else Task.change if own.get("before") is not None else Task.segment
    tile = tile_size or DEFAULT_TILE[wanted]
    if wanted == Task.detect:
        if own.get("before") is not None or own.get("after") is not None:
            raise InputError("detection training takes `images` and `labels` (polygons), not `before`/`after`")
        data = detection_data(
            images=own.get("images"),
            labels=own.get("labels"),
            label_column=own.get("label_column"),
            classes=own.get("classes"),
            tile_size=tile,
            batch_size=recipe.batch_size,
            num_workers=hardware.num_workers,
            val_fraction=val_fraction,
            length=recipe.steps_per_epoch * recipe.batch_size,
        )
        return data, tile
    data = custom_data(
        **own,
        tile_size=tile,
        batch_size=recipe.batch_size,
        num_workers=hardware.num_workers,
        val_fraction=val_fraction,
        length=recipe.steps_per_epoch * recipe.batch_size,
        work_dir=work_dir,
        scene_labels=wanted == Task.classify,
    )
    if data.task != wanted:
        raise InputError(f"`task` {wanted.value} does not fit the data given (it makes a {data.task.value} model)")
    return data, tile


def head_for(data: TrainData, head: dict[str, Any] | None = None) -> dict[str, Any]:
    """Head options of the model: the task's defaults, what the data calls for, then ``head``."""
    options = {**head_options(data.task.value), **data.head, **(head or {})}
    unknown = sorted(set(options) - set(head_options(data.task.value)))
    if unknown:
        raise InputError(f"`head` options {', '.join(unknown)} do not apply to {data.task.value} models")
    return options


def make_module(
    data: TrainData,
    arch: Arch,
    backbone_weights: str | Path | None,
    freeze_backbone: bool,
    recipe: Recipe,
    head: dict[str, Any] | None = None,
) -> LeMeViTTask:
    """The Lightning module of the data's task."""
    kwargs: dict[str, Any] = dict(
        arch=arch.value,
        in_channels=data.bands,
        num_classes=len(data.classes),
        backbone_weights=str(backbone_weights) if backbone_weights else None,
        head=head_for(data, head),
        class_weights=data.class_weights,
        ignore_index=data.ignore_index,
        lr=recipe.lr,
        freeze_backbone=freeze_backbone,
    )
    if data.task == Task.detect:
        kwargs["class_names"] = list(data.classes)
    return TASK_MODULES[data.task.value](**kwargs)


def make_trainer(
    run_dir: Path,
    monitor: tuple[str, str],
    recipe: Recipe,
    hardware: Hardware,
    fast_dev_run: bool,
    progress: bool,
) -> tuple[L.Trainer, L.pytorch.callbacks.ModelCheckpoint, Path]:
    """A Lightning trainer that keeps the best and last checkpoints and writes per-epoch metrics."""
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor[0],
        mode=monitor[1],
        save_last=True,
        enable_version_counter=False,
    )
    metrics_csv = run_dir / "metrics.csv"
    trainer = L.Trainer(
        max_epochs=recipe.epochs,
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=hardware.num_nodes,
        strategy=hardware.strategy,
        precision=lightning_precision(hardware.precision),  # type: ignore[arg-type]
        callbacks=[checkpoint, EpochCSV(metrics_csv)],
        logger=False,
        fast_dev_run=fast_dev_run,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
    )
    return trainer, checkpoint, metrics_csv


def train(
    *,
    dataset: str,
    out: str | Path,
    root: str | Path | None = None,
    images: Any = None,
    labels: Any = None,
    before: Any = None,
    after: Any = None,
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
    task: Task | str | None = None,
    arch: Arch | str = Arch.tiny,
    backbone_weights: str | Path | None = None,
    freeze_backbone: bool = False,
    tile_size: int | None = None,
    val_fraction: float = 0.2,
    recipe: Recipe = Recipe(),
    hardware: Hardware = Hardware(),
    resume: bool = False,
    fast_dev_run: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a model on ``dataset`` (a torchgeo dataset name, or ``custom`` for own rasters) into the bundle
    ``out``; returns a summary. Own data: ``images`` + ``labels`` (+ ``label_column`` for vector labels),
    or ``before`` + ``after`` + ``labels`` for change; ``task="classify"`` trains scene labels,
    ``task="detect"`` an oriented detector from polygons. ``head`` overrides head options (e.g. a small
    detector for a quick run: ``{"fpn_channels": 64, "num_convs": 2}``)."""
    start = time.perf_counter()
    out, name, arch = Path(out), dataset.lower(), Arch(arch)
    check_tile_size(tile_size)
    if not resume:
        given = [images, labels, before, after]
        inputs = [p for g in given if g is not None for p in ([g] if isinstance(g, str | Path) else g)]
        check_output(out, overwrite, inputs)
    with run_folder(out) as run_dir:
        return _train(
            name=name,
            out=out,
            run_dir=run_dir,
            own=dict(
                images=images, before=before, after=after, labels=labels, label_column=label_column, classes=classes
            ),
            root=root,
            task=task,
            arch=arch,
            backbone_weights=backbone_weights,
            freeze_backbone=freeze_backbone,
            tile_size=tile_size,
            val_fraction=val_fraction,
            recipe=recipe,
            hardware=hardware,
            resume=resume,
            fast_dev_run=fast_dev_run,
            progress=progress,
            start=start,
            head=head,
        )


@contextlib.contextmanager
def run_folder(out: Path) -> Iterator[Path]:
    """``<out>.train/`` for checkpoints and metrics; removed again if this run made it and failed before its
    first checkpoint (a run that saved one can be resumed)."""
    run_dir = out.with_name(out.stem + ".train")
    fresh = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield run_dir
    except BaseException:
        if fresh and not any(run_dir.glob("checkpoints/*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(
    *,
    name: str,
    out: Path,
    run_dir: Path,
    own: dict[str, Any],
    root: str | Path | None,
    task: Task | str | None,
    arch: Arch,
    backbone_weights: str | Path | None,
    freeze_backbone: bool,
    tile_size: int | None,
    val_fraction: float,
    recipe: Recipe,
    hardware: Hardware,
    resume: bool,
    fast_dev_run: bool,
    progress: bool,
    start: float,
    head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The four steps of :func:`train` in its run folder: data, module, trainer, bundle."""
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    data, tile = load_data(
        name=name,
        root=root,
        own=own,
        task=task,
        tile_size=tile_size,
        val_fraction=val_fraction,
        recipe=recipe,
        hardware=hardware,
        work_dir=run_dir,
    )
    module = make_module(data, arch, backbone_weights, freeze_backbone, recipe, head)
    trainer, checkpoint, metrics_csv = make_trainer(
        run_dir, type(module).monitor_metric, recipe, hardware, fast_dev_run, progress
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise InputError(f"`resume`: no checkpoint to continue from at {last}")
    trainer.fit(module, datamodule=data.datamodule, ckpt_path=str(last) if resume else None)

    return {
        "dataset": name,
        **export_bundle(out, module, data, arch, tile, trainer, checkpoint),
        "metrics_csv": str(metrics_csv) if metrics_csv.exists() else None,
        "seconds": round(time.perf_counter() - start, 1),
    }


def export_bundle(
    out: Path,
    module: LeMeViTTask,
    data: TrainData,
    arch: Arch,
    tile: int,
    trainer: L.Trainer,
    checkpoint: L.pytorch.callbacks.ModelCheckpoint,
) -> dict[str, Any]:
    """Write the best checkpoint's model (or the last, without validation) as a bundle; return the summary."""
    best_path = checkpoint.best_model_path
    if best_path and Path(best_path).is_file():
        module.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"])
    config = BundleConfig(
        task=data.task,
        arch=arch,
        classes=data.classes,
        bands=data.bands,
        mean=data.mean,
        std=data.std,
        colors=data.colors,
        tile_size=tile,
        gsd=data.gsd,
        head=dict(module.hparams["head"]),
        overlap=data.overlap,
    )
    if trainer.is_global_zero:
        save_bundle(out, module.model.cpu(), config)
    best = checkpoint.best_model_score
    return {
        "task": data.task.value,
        "arch": arch.value,
        "classes": data.classes,
        "bands": data.bands,
        "normalisation": {"mean": [round(m, 4) for m in data.mean], "std": [round(s, 4) for s in data.std]},
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "monitor": checkpoint.monitor,
        "best": None if best is None else round(float(best), 4),
        "bundle": str(out),
        "best_checkpoint": best_path or None,
        "split": data.split,
        "class_weights": data.class_weights,
        "overlap": data.overlap,
    }
