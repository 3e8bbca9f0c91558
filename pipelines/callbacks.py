"""Lightning callbacks of our training runs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L


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
