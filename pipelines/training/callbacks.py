"""Lightning callbacks of our training runs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch


class EpochCSV(L.Callback):
    """Writes one row of metrics per epoch to a CSV file.

    Each metric is read once it is final for the epoch, whichever torchgeo logs it: validation metrics at
    ``on_validation_end`` (torchgeo >= 0.9 logs them in the module's ``on_validation_epoch_end``, which Lightning
    runs after the callbacks' hook of that name; ``ModelCheckpoint`` saves after this hook, so the row is in the
    checkpoint), training metrics once the epoch is over, at the next epoch's start or the end of training
    (torchgeo >= 0.9 logs them in the module's ``on_train_epoch_end``, again after the callbacks' hook).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self._ended: int | None = None  # the epoch whose training metrics are still to be read

    def _record(self, trainer: L.Trainer, epoch: int, val: bool) -> None:
        metrics = {
            k: round(float(v), 6)
            for k, v in sorted(trainer.callback_metrics.items())
            if v.numel() == 1 and k.startswith("val_") == val
        }
        row = next((r for r in self.rows if r["epoch"] == epoch), None)
        if row is None:
            row = {"epoch": epoch}
            self.rows = sorted([*self.rows, row], key=lambda r: r["epoch"])
        row.update(metrics)
        if trainer.is_global_zero:
            keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "epoch", k))
            with open(self.path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.rows)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, trainer.current_epoch, val=True)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._ended = trainer.current_epoch

    def _training_metrics(self, trainer: L.Trainer) -> None:
        if self._ended is not None:
            self._record(trainer, self._ended, val=False)
            self._ended = None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._training_metrics(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._training_metrics(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        if self.path.is_file():  # the checkpoint's last row got its training metrics after the checkpoint was saved
            with open(self.path, newline="") as fh:
                written = {r["epoch"]: r for r in csv.DictReader(fh)}
            for row in self.rows:
                extra = written.get(str(row["epoch"]), {})
                row.update({k: float(v) for k, v in extra.items() if k not in row and v != ""})


class MajorityBaseline(L.Callback):
    """Scores predicting the training labels' most frequent class everywhere, on the validation batches.

    Counts the classes of the training batches (masks or scene labels, ``ignore_index`` left out) and, at each
    validation, scores the constant prediction on exactly the pixels (or tiles) the model's validation metrics
    score, with the same metrics: the floor a model has to clear.

    Args:
        num_classes: Classes of the task.
        ignore_index: Label value that metrics skip, if any.
        dense: Masks (segmentation, change: OA and mIoU) rather than scene labels (OA).
    """

    def __init__(self, num_classes: int, ignore_index: int | None, dense: bool) -> None:
        self.num_classes, self.ignore_index, self.dense = num_classes, ignore_index, dense
        self.counts = torch.zeros(num_classes, dtype=torch.long)
        self.metrics: Any = None
        self.result: dict[str, Any] = {}

    def _target(self, batch: dict[str, Any]) -> torch.Tensor:
        target = batch["mask" if self.dense else "label"].long()
        return target[:, 0] if self.dense and target.ndim == 4 else target

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        target = self._target(batch).flatten().cpu()
        self.counts += torch.bincount(target[(target >= 0) & (target < self.num_classes)], minlength=self.num_classes)

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        metrics: dict[str, Any] = {
            "OA": MulticlassAccuracy(self.num_classes, average="micro", ignore_index=self.ignore_index)
        }
        if self.dense:
            metrics["mIoU"] = MulticlassJaccardIndex(self.num_classes, average="macro", ignore_index=self.ignore_index)
        self.metrics = MetricCollection(metrics) if self.counts.sum() else None

    def on_validation_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, idx: int, loader: int = 0
    ) -> None:
        if self.metrics is not None:
            target = self._target(batch).cpu()
            self.metrics.update(torch.full_like(target, int(self.counts.argmax())), target)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.metrics is not None:
            scores = {k: round(float(v), 4) for k, v in self.metrics.compute().items()}
            self.result = {"class": int(self.counts.argmax()), **scores}

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "result": self.result}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts = torch.tensor(state_dict.get("counts", self.counts.tolist()), dtype=torch.long)
        self.result = dict(state_dict.get("result", {}))
