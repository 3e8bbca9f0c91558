"""Training: data, Lightning module, trainer, bundle.

``train(dataset="potsdam", root=...)`` trains on a torchgeo dataset through its datamodule;
``train(dataset="custom", images=..., labels=...)`` (segmentation) or ``before/after/labels`` (change)
trains on the user's GeoTIFFs (:mod:`lemevit_geo.pipelines.training.train_data`). The result is a bundle that
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
import numpy as np
import torch

from lemevit_geo.bundle import DEFAULT_TILE, BundleConfig, check_safetensors_name, save_bundle
from lemevit_geo.choices import Arch, Precision, Schedule, Task
from lemevit_geo.device import cpu_supports_bf16
from lemevit_geo.errors import InputError
from lemevit_geo.models.factory import head_options
from lemevit_geo.outputs import check_output
from lemevit_geo.pipelines.training.baselines import pixel_baseline
from lemevit_geo.pipelines.training.callbacks import EpochCSV, MajorityBaseline
from lemevit_geo.pipelines.training.datamodules import TileAugmentation
from lemevit_geo.pipelines.training.tasks import TASK_MODULES, DetectionModule, LeMeViTTask
from lemevit_geo.pipelines.training.train_data import (
    DATASETS,
    Loading,
    TrainData,
    custom_data,
    detection_data,
    torchgeo_data,
)
from lemevit_geo.settings import Hardware, Recipe, TrainSpec


def lightning_precision(precision: Precision | str) -> str:
    """Lightning's precision string for ours (auto: bf16-mixed where the hardware runs bf16 fast)."""
    precision = Precision(precision)
    if precision == Precision.auto:
        if torch.cuda.is_available():
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "bf16-mixed" if cpu_supports_bf16() else "32-true"
    return {Precision.fp32: "32-true", Precision.bf16: "bf16-mixed", Precision.fp16: "16-mixed"}[precision]


def load_data(spec: TrainSpec, work_dir: Path) -> tuple[TrainData, int]:
    """The training data of ``spec``: a torchgeo dataset, or own rasters (``work_dir`` holds rasterised
    labels); and the tile size."""
    name, recipe, hardware, tile_size, own = spec.dataset, spec.recipe, spec.hardware, spec.tile_size, spec.own
    if spec.point_size is not None and (name != "custom" or spec.task != Task.detect):
        raise InputError("`point_size` applies to own detection labels (`task` detect): points become boxes")
    if name != "custom":
        if name not in DATASETS:
            raise InputError(f"unknown dataset {name!r}; choose one of custom, {', '.join(DATASETS)}")
        if spec.root is None:
            raise InputError(f"dataset {name} needs `root`, the folder holding it ({DATASETS[name].expects})")
        check_torchgeo_recipe(recipe)
        tile = tile_size or DEFAULT_TILE[DATASETS[name].task]
        return torchgeo_data(name, Path(spec.root), recipe.batch_size, tile, hardware.num_workers), tile
    wanted = spec.task or (Task.change if own.get("before") is not None else Task.segment)
    loading = Loading(
        recipe.batch_size, hardware.num_workers, spec.val_fraction, recipe.steps_per_epoch * recipe.batch_size
    )
    if wanted == Task.detect:
        if own.get("before") is not None or own.get("after") is not None:
            raise InputError("detection training takes `images` and `labels` (polygons), not `before`/`after`")
        if recipe.class_balance:
            raise InputError(
                "`class_balance` applies to segment, change and classify: it weighs pixel classes, and detection "
                "training has boxes"
            )
        if recipe.schedule != Schedule.cosine or recipe.warmup != Recipe().warmup:
            raise InputError(
                "`schedule` and `warmup` do not apply to detection training: it warms up over 10 % of the steps "
                "(at most 500) and decays by cosine"
            )
        data = detection_data(
            images=own.get("images"),
            labels=own.get("labels"),
            label_column=own.get("label_column"),
            classes=own.get("classes"),
            tile_size=tile_size,
            default_tile=DEFAULT_TILE[wanted],
            point_size=spec.point_size,
            loading=loading,
            augment=recipe.augment,
        )
        return data, int(data.tile_size)
    augmentation = TileAugmentation() if recipe.augment else None
    data = custom_data(
        **own,
        tile_size=tile_size,
        default_tile=DEFAULT_TILE[wanted],
        loading=loading,
        work_dir=work_dir,
        scene_labels=wanted == Task.classify,
        augmentation=augmentation,
    )
    if data.task != wanted:
        raise InputError(f"`task` {wanted.value} does not fit the data given (it makes a {data.task.value} model)")
    return data, int(data.tile_size or tile_size or DEFAULT_TILE[wanted])


def check_torchgeo_recipe(recipe: Recipe) -> None:
    """Refuse recipe options that only own data has: torchgeo's datamodules keep their own augmentations, and
    class balance needs own data's label counts."""
    if not recipe.augment:
        raise InputError(
            "`augment` applies to own data (`dataset` custom): torchgeo's datamodules bring their own augmentations"
        )
    if recipe.class_balance:
        raise InputError("`class_balance` applies to own data (`dataset` custom), whose labels it counts")


def balanced_weights(counts: Sequence[int], power: float) -> list[float]:
    """Loss weight per class: ``(median frequency / frequency) ** power`` over the classes seen (others get 1),
    clipped to [0.1, 10]."""
    freq = np.asarray(counts, dtype=float)
    seen = freq > 0
    if not seen.any():
        return [1.0] * len(freq)
    weights = np.ones_like(freq)
    weights[seen] = (np.median(freq[seen]) / freq[seen]) ** power
    return [round(float(w), 4) for w in np.clip(weights, 0.1, 10.0)]


def recipe_head(task: Task, recipe: Recipe) -> dict[str, Any]:
    """The head options ``recipe`` sets for ``task`` (segmentation: the decoder's and the pixel branch's width)."""
    if task == Task.segment:
        return {"decoder_channels": recipe.decoder_channels, "pixel_channels": recipe.pixel_channels}
    return {}


def head_for(data: TrainData, recipe: Recipe, head: dict[str, Any] | None = None) -> dict[str, Any]:
    """Head options of the model: the task's defaults, the recipe's, what the data calls for, then ``head``."""
    from_recipe = recipe_head(data.task, recipe)
    options = {**head_options(data.task.value), **from_recipe, **data.head, **(head or {})}
    unknown = sorted(set(options) - set(head_options(data.task.value)) - set(from_recipe))
    if unknown:
        raise InputError(f"`head` options {', '.join(unknown)} do not apply to {data.task.value} models")
    return options


def make_module(data: TrainData, spec: TrainSpec) -> LeMeViTTask:
    """The Lightning module of the data's task, as ``spec`` asks for it."""
    recipe = spec.recipe
    weights = data.class_weights
    if recipe.class_balance:
        if not data.class_counts:
            raise InputError("`class_balance` needs the training labels' class counts (own data)")
        weights = balanced_weights(data.class_counts, recipe.class_balance)
    kwargs: dict[str, Any] = dict(
        arch=spec.arch.value,
        in_channels=data.bands,
        num_classes=len(data.classes),
        backbone_weights=str(spec.backbone_weights) if spec.backbone_weights else None,
        head=head_for(data, recipe, spec.head),
        class_weights=weights,
        ignore_index=data.ignore_index,
        lr=recipe.lr,
        freeze_backbone=spec.freeze_backbone,
        weight_decay=recipe.weight_decay,
        schedule=recipe.schedule.value,
        warmup=recipe.warmup,
        drop_path=recipe.drop_path,
    )
    if data.task == Task.detect:
        kwargs["class_names"] = list(data.classes)
    return TASK_MODULES[data.task.value](**kwargs)


def make_trainer(
    run_dir: Path,
    monitor: tuple[str, str] | None,
    epochs: int,
    hardware: Hardware,
    *,
    fast_dev_run: bool = False,
    progress: bool = True,
    extra: Sequence[L.Callback] = (),
) -> tuple[L.Trainer, L.pytorch.callbacks.ModelCheckpoint, EpochCSV]:
    """A Lightning trainer that keeps the best (by ``monitor``: name, min or max; without it, the latest) and
    last checkpoints, writes per-epoch metrics and runs the ``extra`` callbacks."""
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best" if monitor else "last",
        monitor=monitor[0] if monitor else None,
        mode=monitor[1] if monitor else "min",
        save_last=bool(monitor),
        enable_version_counter=False,
    )
    epoch_csv = EpochCSV(run_dir / "metrics.csv")
    callbacks: list[L.Callback] = [checkpoint, epoch_csv, *extra]
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=hardware.num_nodes,
        strategy=hardware.strategy,
        precision=lightning_precision(hardware.precision),  # type: ignore[arg-type]
        callbacks=callbacks,
        logger=False,
        fast_dev_run=fast_dev_run,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
    )
    return trainer, checkpoint, epoch_csv


def train(spec: TrainSpec | None = None, /, *, progress: bool = True, **options: Any) -> dict[str, Any]:
    """Train a model as ``spec`` (or a :class:`~lemevit_geo.settings.TrainSpec` of ``options``) asks: on a
    torchgeo dataset, or ``custom`` own rasters, into the bundle ``out``; returns a summary.

    Own data: ``images`` + ``labels`` (+ ``label_column`` for vector labels), or ``before`` + ``after`` +
    ``labels`` for change; ``task="classify"`` trains scene labels, ``task="detect"`` an oriented detector
    from polygons (and points, as squares of side ``point_size`` in map units). ``head`` overrides head options
    (e.g. a small detector for a quick run: ``{"fpn_channels": 64, "num_convs": 2}``).

    The summary reports the best validation metrics next to predicting the majority class (segment, change,
    classify), and with ``baseline`` (own data, segment and change) next to a per-pixel gradient-boosting
    classifier on the same split (:mod:`lemevit_geo.pipelines.training.baselines`)."""
    start = time.perf_counter()
    spec = spec or TrainSpec(**options)
    check_safetensors_name(spec.out)
    if not spec.resume:
        check_output(spec.out, spec.overwrite, spec.inputs)
    with run_folder(spec.out) as run_dir:
        return _train(spec, run_dir, progress, start)


@contextlib.contextmanager
def run_folder(out: Path, suffix: str = ".train") -> Iterator[Path]:
    """``<out><suffix>/`` for checkpoints and metrics; removed again if this run made it and failed before its
    first checkpoint (a run that saved one can be resumed)."""
    run_dir = out.with_name(out.stem + suffix)
    fresh = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield run_dir
    except BaseException:
        if fresh and not any(run_dir.glob("checkpoints/*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(spec: TrainSpec, run_dir: Path, progress: bool, start: float) -> dict[str, Any]:
    """The four steps of :func:`train` in its run folder: data, module, trainer, bundle (and the baselines)."""
    recipe = spec.recipe
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    data, tile = load_data(spec, run_dir)
    if spec.baseline and spec.dataset != "custom":
        raise InputError("`baseline` applies to own data (`dataset` custom)")
    module = make_module(data, spec)
    extra: list[L.Callback] = []
    majority = None
    if data.task != Task.detect:
        majority = MajorityBaseline(len(data.classes), data.ignore_index, dense=data.task != Task.classify)
        extra.append(majority)
    trainer, checkpoint, epochs = make_trainer(
        run_dir,
        type(module).monitor_metric,
        recipe.epochs,
        spec.hardware,
        fast_dev_run=spec.fast_dev_run,
        progress=progress,
        extra=extra,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    if spec.resume and not last.is_file():
        raise InputError(f"`resume`: no checkpoint to continue from at {last}")
    trainer.fit(module, datamodule=data.datamodule, ckpt_path=str(last) if spec.resume else None)
    summary = export_bundle(spec.out, module, data, spec.arch, tile, trainer, checkpoint)
    baselines: dict[str, Any] = {}
    if majority is not None and majority.result:
        baselines["majority"] = {**majority.result, "class": data.classes[majority.result["class"]]}
    if spec.baseline and trainer.is_global_zero:
        baselines["pixel_classifier"] = pixel_baseline(data, seed=recipe.seed)
    return {
        "dataset": spec.dataset,
        **summary,
        "validation": best_row(epochs, summary["best_epoch"]),
        "baselines": baselines,
        "metrics_csv": str(epochs.path) if epochs.path.exists() else None,
        "seconds": round(time.perf_counter() - start, 1),
    }


def best_row(epochs: EpochCSV, epoch: int | None) -> dict[str, float]:
    """The validation metrics of ``epoch`` (the best checkpoint's), without their ``val_`` prefix."""
    row = next((r for r in epochs.rows if r["epoch"] == epoch), {})
    return {k.removeprefix("val_"): round(float(v), 4) for k, v in row.items() if k.startswith("val_")}


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
    best_path, best_epoch = checkpoint.best_model_path, None
    if best_path and Path(best_path).is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        module.on_load_checkpoint(state)  # type: ignore[attr-defined]
        best_epoch = state["epoch"]
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
        detect=module.calibration() if isinstance(module, DetectionModule) else None,
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
        "best_epoch": best_epoch,
        "bundle": str(out),
        "best_checkpoint": best_path or None,
        "split": data.split,
        "tile_size": tile,
        "head": dict(module.hparams["head"]),
        "class_weights": module.hparams["class_weights"],
        "overlap": data.overlap,
        **({"score_thresholds": config.score_thresholds()} if config.task == Task.detect else {}),
    }
