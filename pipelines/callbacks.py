"""Lightning callbacks of our training runs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L


class EpochCSV(L.Callback):
    """Writes one row of metrics per epoch (after validation) to a CSV file.

    The row is written when validation ends, after the module's own ``on_validation_epoch_end`` (which is
    where metrics computed over the whole epoch, such as detection mAP, are logged).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch}
        row.update({k: round(float(v), 6) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1})
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:
            keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "epoch", k))
            with open(self.path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.rows)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
