"""Lightning modules of the trainable tasks, built on torchgeo's trainers.

They reuse torchgeo's losses, class weights, ignore index, optimiser, schedule, logging and
``freeze_backbone`` / ``freeze_decoder``, and replace only the model (our task models around one
LeMeViT backbone, each with smp's ``encoder`` / ``decoder`` / head layout) and add the metrics we
report: overall accuracy and mean IoU for segmentation, F1 of the change class for change, accuracy
for scenes. Oriented detection has no torchgeo task (``ObjectDetectionTask`` is for axis-aligned boxes
and torchvision models): :class:`DetectionModule` keeps torchgeo's base task (hyperparameters, model set
up by ``configure_models``) and brings its own steps, schedule and DOTA-style mAP.
"""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lemevit_geo.choices import Schedule
from lemevit_geo.models.factory import backbone_of, build_task_model
from lemevit_geo.pipelines.metrics import detection_ap, operating_points, rows_to_detections
from lemevit_geo.pipelines.training.compat import (
    BaseTask,
    ChangeDetectionTask,
    ClassificationTask,
    SemanticSegmentationTask,
)
from lemevit_geo.weights import load_backbone_weights


class ChangeF1(Metric):
    """F1 score of the *change* class (index 1) from per-pixel change logits."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        pred = preds.argmax(dim=1) if preds.ndim == target.ndim + 1 else preds
        keep = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        p, t = (pred == 1) & keep, (target == 1) & keep
        self.tp += (p & t).sum()
        self.fp += (p & ~t).sum()
        self.fn += (~p & t).sum()

    def compute(self) -> torch.Tensor:
        denom = 2 * self.tp + self.fp + self.fn
        return (2 * self.tp).float() / denom.clamp(min=1)


def dense_metrics(num_classes: int, ignore_index: int | None, change: bool = False) -> MetricCollection:
    """OA and macro mIoU (and the change class's F1)."""
    metrics: dict[str, Metric] = {
        "OA": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
        "mIoU": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
    }
    if change:
        metrics["F1"] = ChangeF1(ignore_index)
    return MetricCollection(metrics)


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Learning-rate factor at ``step``: linear from 1/``warmup`` to 1 over ``warmup`` steps, then a cosine decay
    to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def decay_groups(module: torch.nn.Module) -> list[dict[str, Any]]:
    """Parameter groups for AdamW: weights decay; norms, biases and meta tokens (vectors) do not."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name.endswith("meta_tokens") else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw_cosine(module: L.LightningModule, lr: float, weight_decay: float, warmup: float) -> dict[str, Any]:
    """Lightning's optimiser config: AdamW over :func:`decay_groups`, warm-up for a ``warmup`` share of the run's
    steps, then cosine decay to zero at its last step."""
    optimizer = torch.optim.AdamW(decay_groups(module), lr=lr, weight_decay=weight_decay)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    factor = functools.partial(warmup_cosine, warmup=round(total * warmup), total=total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class LeMeViTTask:
    """Mixin over a torchgeo task: one constructor for every task, and our model in ``configure_models``.

    Args:
        arch: LeMeViT size.
        in_channels: Input bands per image.
        num_classes: Output classes.
        backbone_weights: Official LeMeViT checkpoint to start the backbone from.
        head: Head options (stored in the bundle).
        class_weights: Loss weight per class.
        ignore_index: Label value ignored by the loss and metrics (dense tasks).
        lr: Peak learning rate (AdamW).
        patience: Epochs without improvement before the learning rate drops (``plateau``).
        freeze_backbone: Train only the decoder and head (or only the classifier).
        freeze_decoder: Train only the head (dense tasks).
        weight_decay: AdamW weight decay of weights (norms, biases and meta tokens get none).
        schedule: ``cosine`` (linear warm-up, then cosine decay per step) or ``plateau`` (torchgeo's).
        warmup: Share of the run's steps that warm the learning rate up (``cosine``).
        drop_path: Stochastic depth of the backbone.
    """

    #: Task name of the model factory and the bundle.
    task_name: ClassVar[str]
    #: Metric that picks the best checkpoint, and whether higher is better.
    monitor_metric: ClassVar[tuple[str, str]]
    #: The model torchgeo records in the hyperparameters (``{arch}`` is filled in).
    model_template: ClassVar[str]

    def __init__(
        self,
        arch: str = "tiny",
        in_channels: int = 3,
        num_classes: int = 2,
        backbone_weights: str | None = None,
        head: dict[str, Any] | None = None,
        class_weights: list[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-3,
        patience: int = 10,
        freeze_backbone: bool = False,
        freeze_decoder: bool = False,
        weight_decay: float = 0.05,
        schedule: str = "cosine",
        warmup: float = 0.05,
        drop_path: float = 0.1,
    ) -> None:
        self.recipe: dict[str, Any] = dict(weight_decay=weight_decay, schedule=Schedule(schedule).value, warmup=warmup)
        self.drop_path = drop_path
        given = dict(
            model=self.model_template.format(arch=arch),
            backbone=f"tu-lemevit_{arch}",
            in_channels=in_channels,
            task="multiclass",
            num_classes=num_classes,
            loss="ce",
            class_weights=class_weights,
            ignore_index=ignore_index,
            lr=lr,
            patience=patience,
            freeze_backbone=freeze_backbone,
            freeze_decoder=freeze_decoder,
        )
        accepted = inspect.signature(super().__init__).parameters  # of the torchgeo task this mixin is over
        if freeze_decoder and "freeze_decoder" not in accepted:
            raise ValueError(f"freeze_decoder does not apply to {self.task_name} models: they have no decoder")
        super().__init__(**{k: v for k, v in given.items() if k in accepted})
        self.hparams.update(self.recipe, drop_path=drop_path)  # type: ignore[attr-defined]

    def configure_models(self) -> None:
        hparams: Any = self.hparams  # type: ignore[attr-defined]
        model = build_task_model(
            self.task_name,
            hparams["arch"],
            in_chans=hparams["in_channels"],
            num_classes=hparams["num_classes"],
            drop_path_rate=self.drop_path,
            **(hparams.get("head") or {}),
        )
        if hparams.get("backbone_weights"):
            load_backbone_weights(backbone_of(model), Path(hparams["backbone_weights"]))
        if hparams.get("freeze_backbone"):
            if hasattr(model, "encoder"):
                model.encoder.requires_grad_(False)
            else:  # a classifier: only its head trains
                model.requires_grad_(False)
                model.get_classifier().requires_grad_(True)
        if hparams.get("freeze_decoder"):
            model.decoder.requires_grad_(False)
        self.model = model

    def configure_optimizers(self) -> Any:
        """AdamW (no decay on norms, biases and meta tokens) with warm-up + cosine per step, or torchgeo's plateau."""
        module: Any = self  # a LightningModule once combined with the torchgeo task
        lr, weight_decay = module.hparams["lr"], self.recipe["weight_decay"]
        if self.recipe["schedule"] == Schedule.cosine.value:
            return adamw_cosine(module, lr, weight_decay, self.recipe["warmup"])
        optimizer = torch.optim.AdamW(decay_groups(module), lr=lr, weight_decay=weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=module.hparams["patience"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": module.monitor}}

    def set_metrics(self, metrics: MetricCollection) -> None:
        """Train / val / test copies of ``metrics``, prefixed as torchgeo's steps log them."""
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")


class SegmentationModule(LeMeViTTask, SemanticSegmentationTask):
    """LeMeViT + UPerNet semantic segmentation (cross-entropy, optional class weights / ignore index)."""

    task_name = "segment"
    monitor_metric = ("val_mIoU", "max")
    model_template = "upernet"

    def configure_metrics(self) -> None:
        self.set_metrics(dense_metrics(self.hparams["num_classes"], self.hparams["ignore_index"]))


class ChangeModule(LeMeViTTask, ChangeDetectionTask):
    """Siamese LeMeViT + BIT-style head; batches hold ``image`` (B, 2, C, H, W) and ``mask``."""

    task_name = "change"
    monitor_metric = ("val_F1", "max")
    model_template = "bit"

    def configure_metrics(self) -> None:
        self.set_metrics(dense_metrics(self.hparams["num_classes"], self.hparams["ignore_index"], change=True))


class IgnoringCrossEntropy(torch.nn.Module):
    """Cross-entropy over the labelled samples only; 0 (no gradient) for a batch without any."""

    def __init__(self, weight: torch.Tensor | None, ignore_index: int) -> None:
        super().__init__()
        self.loss = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, reduction="sum")
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target) / (target != self.ignore_index).sum().clamp(min=1)


class ClassificationModule(LeMeViTTask, ClassificationTask):
    """LeMeViT scene classification with its pooled image-and-meta-token head.

    With ``ignore_index`` (own data: tiles without any labelled pixel) those tiles count in neither the
    loss nor the metrics.
    """

    task_name = "classify"
    monitor_metric = ("val_OA", "max")
    model_template = "lemevit_{arch}"

    def configure_losses(self) -> None:
        super().configure_losses()
        ignore = self.hparams["ignore_index"]
        if ignore is not None:
            weights = self.hparams["class_weights"]
            self.criterion = IgnoringCrossEntropy(None if weights is None else torch.as_tensor(weights), ignore)

    def configure_metrics(self) -> None:
        accuracy = MulticlassAccuracy(
            self.hparams["num_classes"], average="micro", ignore_index=self.hparams["ignore_index"]
        )
        self.set_metrics(MetricCollection({"OA": accuracy}))


def _finite(value: float) -> float:
    """A metric without reference objects to count (NaN) logged as 0."""
    return 0.0 if np.isnan(value) else float(value)


class DetectionModule(LeMeViTTask, BaseTask):
    """LeMeViT + FPN + rotated FCOS head (oriented boxes).

    Batches hold ``image`` ``(B, C, H, W)`` (normalised) and, one tensor per image, ``boxes`` ``(N, 5)``
    (``cx, cy, w, h, angle`` in pixels and radians), ``labels`` ``(N,)`` and ``ignore`` ``(N,)`` (difficult
    or partly seen objects: no loss, and neither hits nor misses in validation). Optimiser: AdamW (weight
    decay ``weight_decay``, 0.05 by default) with a linear warm-up (10 % of the steps, at most 500) and a cosine
    decay per step; gradients clipped to norm 10. Validation
    logs DOTA-style ``val_mAP`` (IoU 0.5, all points), ``val_mAP_07`` (VOC07 11 points) and ``val_AP_<class>``,
    and chooses the operating point: per class the score threshold that maximises F1 at IoU 0.5
    (:func:`~lemevit_geo.pipelines.metrics.operating_points`), logged as ``val_precision``, ``val_recall`` and
    ``val_F1`` of all classes at those thresholds, kept in the checkpoint and written to the bundle
    (:meth:`calibration`).

    Args:
        class_names: Class names for the per-class metrics (default: class indices).
        **kwargs: As :class:`LeMeViTTask`.
    """

    task_name = "detect"
    monitor_metric = ("val_mAP", "max")
    model_template = "oriented_fcos_lemevit_{arch}"
    monitor = "val_mAP"
    mode = "max"

    def __init__(self, class_names: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_records: tuple[list[dict], list[dict]] = ([], [])
        self.operating: dict[str, Any] | None = None  # the last validation's operating point

    def _targets(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        return [
            {"boxes": b, "labels": lab, "ignore": ign}
            for b, lab, ign in zip(batch["boxes"], batch["labels"], batch["ignore"], strict=True)
        ]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.model.loss(self.model(batch["image"]), self._targets(batch))
        self.log_dict({f"train_{k}": v for k, v in losses.items()}, batch_size=batch["image"].shape[0])
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rows = self.model(batch["image"]).float().cpu().numpy()
        detections, truths = self.val_records
        for i, r in enumerate(rows):
            image = (self.global_rank, batch_idx, i)
            detections.extend(rows_to_detections(r, image))
            boxes, labels, ignore = (batch[k][i].detach().cpu().numpy() for k in ("boxes", "labels", "ignore"))
            truths.extend(
                {"image": image, "class": int(c), "box": b, "difficult": bool(d)}
                for b, c, d in zip(boxes, labels, ignore, strict=True)
            )

    def on_validation_epoch_end(self) -> None:
        detections, truths = self.val_records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.val_records)
            detections = [d for part in gathered for d in part[0]]
            truths = [t for part in gathered for t in part[1]]
        self.val_records = ([], [])
        classes = list(range(self.hparams["num_classes"]))
        names = self.hparams.get("class_names") or [str(c) for c in classes]
        result = detection_ap(detections, truths, classes)
        voc07 = detection_ap(detections, truths, classes, use_07=True)
        metrics = {"val_mAP": _finite(result["mAP"]), "val_mAP_07": _finite(voc07["mAP"])}
        metrics.update({f"val_AP_{names[c]}": _finite(result["AP"][c]) for c in classes})
        points = operating_points(detections, truths, classes, floor=float(self.model.score_threshold))
        overall = points["overall"] if points else dict.fromkeys(("precision", "recall", "F1"), 0.0)
        metrics.update({f"val_{k}": v for k, v in overall.items()})
        self.operating = None if points is None else {**points, "epoch": self.current_epoch}
        self.log_dict(metrics, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["detect_operating_point"] = self.operating

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.operating = checkpoint.get("detect_operating_point")

    def calibration(self) -> dict[str, Any] | None:
        """The bundle's ``detect`` record (see :class:`~lemevit_geo.bundle.BundleConfig`) from the operating point
        of the validation that chose the weights; ``None`` without one (no validation object was found)."""
        if self.operating is None:
            return None
        names = self.hparams.get("class_names") or [str(c) for c in range(self.hparams["num_classes"])]
        points = self.operating["classes"]

        def rounded(point: dict[str, Any]) -> dict[str, Any]:
            return {k: round(v, 4) if isinstance(v, float) else v for k, v in point.items() if k != "threshold"}

        return {
            "thresholds": {names[c]: round(points[c]["threshold"], 4) for c in points},
            "source": f"validation F1 at IoU 0.5 (epoch {self.operating['epoch']})",
            "iou": 0.5,
            "validation": {names[c]: rounded(points[c]) for c in points},
            "overall": {k: round(v, 4) for k, v in self.operating["overall"].items()},
        }

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=10.0, gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.recipe["weight_decay"]
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, min(500, total // 10))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup, floor=0.01)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


TASK_MODULES: dict[str, type[LeMeViTTask]] = {
    "segment": SegmentationModule,
    "change": ChangeModule,
    "classify": ClassificationModule,
    "detect": DetectionModule,
}
