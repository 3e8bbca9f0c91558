"""Lightning modules of the trainable tasks, built on torchgeo's trainers.

They reuse torchgeo's losses, class weights, ignore index, optimiser, schedule, logging and
``freeze_backbone`` / ``freeze_decoder``, and replace only the model (our task models around one
LeMeViT backbone, each with smp's ``encoder`` / ``decoder`` / head layout) and add the metrics we
report: overall accuracy and mean IoU for segmentation, F1 of the change class for change, accuracy
for scenes.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lemevit_geo.models.factory import backbone_of, build_task_model
from lemevit_geo.pipelines.compat import ChangeDetectionTask, ClassificationTask, SemanticSegmentationTask
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
        lr: Learning rate (AdamW).
        patience: Epochs without improvement before the learning rate drops.
        freeze_backbone: Train only the decoder and head (or only the classifier).
        freeze_decoder: Train only the head (dense tasks).
    """

    #: Task name of the model factory and the bundle.
    task_name: ClassVar[str]
    #: Metric that picks the best checkpoint, and whether higher is better.
    monitor_metric: ClassVar[tuple[str, str]]
    #: The torchgeo task class this mixin is combined with (its constructor takes the arguments below).
    torchgeo_task: ClassVar[type]
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
    ) -> None:
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
        accepted = inspect.signature(self.torchgeo_task.__init__).parameters
        if freeze_decoder and "freeze_decoder" not in accepted:
            raise ValueError(f"freeze_decoder does not apply to {self.task_name} models: they have no decoder")
        super().__init__(**{k: v for k, v in given.items() if k in accepted})

    def configure_models(self) -> None:
        hparams: Any = self.hparams  # type: ignore[attr-defined]
        model = build_task_model(
            self.task_name,
            hparams["arch"],
            in_chans=hparams["in_channels"],
            num_classes=hparams["num_classes"],
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

    def set_metrics(self, metrics: MetricCollection) -> None:
        """Train / val / test copies of ``metrics``, prefixed as torchgeo's steps log them."""
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")


class SegmentationModule(LeMeViTTask, SemanticSegmentationTask):
    """LeMeViT + UPerNet semantic segmentation (cross-entropy, optional class weights / ignore index)."""

    task_name = "segment"
    monitor_metric = ("val_mIoU", "max")
    torchgeo_task = SemanticSegmentationTask
    model_template = "upernet"

    def configure_metrics(self) -> None:
        self.set_metrics(dense_metrics(self.hparams["num_classes"], self.hparams["ignore_index"]))


class ChangeModule(LeMeViTTask, ChangeDetectionTask):
    """Siamese LeMeViT + BIT-style head; batches hold ``image`` (B, 2, C, H, W) and ``mask``."""

    task_name = "change"
    monitor_metric = ("val_F1", "max")
    torchgeo_task = ChangeDetectionTask
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
    torchgeo_task = ClassificationTask
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


TASK_MODULES: dict[str, type[LeMeViTTask]] = {
    "segment": SegmentationModule,
    "change": ChangeModule,
    "classify": ClassificationModule,
}
