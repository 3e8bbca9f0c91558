"""The ``evaluate`` command: score an output against reference labels, print a table (or JSON)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from lemevit_geo import options as o
from lemevit_geo.cli.app import app
from lemevit_geo.cli.display import print_json
from lemevit_geo.options import Display, grouped


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(summary: dict[str, Any]) -> Table:
    """Headline scores, then one row per class."""
    task = summary["task"]
    table = Table(title=f"{summary['prediction']} against {summary['reference']} ({task})")
    if task == "detect":
        table.add_column("class")
        for col in (f"AP@{summary['iou']}", "AP (VOC07)", "recall", "reference", "detections"):
            table.add_column(col, justify="right")
        for c, ap in summary["AP"].items():
            row = [
                ap,
                summary["AP_07"][c],
                summary["recall"][c],
                summary["num_reference"][c],
                summary["num_detections"][c],
            ]
            table.add_row(c, *map(_fmt, row))
        table.add_row("[bold]mean[/]", _fmt(summary["mAP"]), _fmt(summary["mAP_07"]), "", "", "")
        written = summary["as_written"]
        scores = ", ".join(f"{k} {_fmt(written[k])}" for k in ("precision", "recall", "F1", "boxes_per_object"))
        table.caption = f"every box as written: {scores}"
    elif task == "segment":
        table.add_column("class")
        table.add_column("IoU", justify="right")
        for c, iou in summary["IoU"].items():
            table.add_row(c, _fmt(iou))
        table.add_row("[bold]mean IoU[/]", _fmt(summary["mIoU"]))
        table.add_row("[bold]overall accuracy[/]", _fmt(summary["OA"]))
    else:
        table.add_column("score")
        table.add_column("value", justify="right")
        for key in ("precision", "recall", "F1", "IoU", "changed_pixels", "pixels"):
            table.add_row(key, _fmt(summary[key]))
    return table


@app.command()
@grouped(display=Display())
def evaluate(
    prediction: o.PredictionArg,
    reference: o.Reference,
    task: o.EvalTask = None,
    iou: o.Iou = 0.5,
    label_column: o.ReferenceLabelColumn = None,
    bounds: o.Bounds = None,
    report: o.Report = None,
    image: o.ReportImage = None,
    overwrite: o.Overwrite = False,
    *,
    display: Display,
) -> None:
    """Score an output against reference labels: mIoU, change F1 or detection mAP (the metrics training uses)."""
    from lemevit_geo.pipelines.apps.evaluate import evaluate as run

    if report is not None:
        from lemevit_geo.pipelines.report.page import check_report_path

        check_report_path(report, overwrite, [prediction, reference, *([image] if image else [])])
    summary = run(
        prediction=prediction, reference=reference, task=task, iou=iou, label_column=label_column, bounds=bounds
    )
    if report is not None:
        import shlex
        import sys

        from lemevit_geo.pipelines.report.runs import evaluate_report

        command_line = shlex.join(["lemevit-geo", *sys.argv[1:]])
        options = dict(image=image, label_column=label_column, command_line=command_line, overwrite=overwrite)
        summary["report"] = str(evaluate_report(path=report, scores=summary, **options))
    if display.json:
        print_json(summary)
    elif not display.quiet:
        out = Console()
        out.print(_table(summary))
        if summary["task"] == "segment":
            cm = summary["confusion_matrix"]
            matrix = Table(title="confusion matrix (rows: reference, columns: prediction)")
            matrix.add_column("")
            for c in cm["classes"]:
                matrix.add_column(c, justify="right")
            for c, row in zip(cm["classes"], cm["rows_reference_columns_prediction"], strict=True):
                matrix.add_row(c, *map(str, row))
            out.print(matrix)
