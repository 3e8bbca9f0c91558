"""The demo's detector alone: train it as ``lemevit-geo demo`` does, detect, score the held-out strip.

Candidates for a better detector on the demo's budget (issue 20) are measured one at a time with this
script: the head options (``--head``, JSON, over the demo's) and the training recipe change, the rest is the
demo's ``detect`` task (``pipelines/apps/demo.py``: the calibrated default threshold, a second all-scores
file for mAP). Prints one JSON line: held-out mAP, P/R/F1 and boxes per object at the default threshold,
the thresholds and the seconds.

    python benchmarks/detect_experiment.py --size 2048 --head '{"use_p2": true}'
    python benchmarks/detect_experiment.py --out DIR --predict-only   # DIR's bundle, detect and score again
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from lemevit_geo.pipelines.apps import demo
from lemevit_geo.pipelines.apps.synthetic import make_scene
from lemevit_geo.settings import Engine, Hardware, Recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--head", default="{}", help="head options over the demo's (JSON)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--predict-only", action="store_true", help="no training: detect with the bundle in --out")
    args = parser.parse_args()
    if args.predict_only:
        print(json.dumps(predict_only(args.out, args.batch_size)))
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    demo.DEMO_DETECTOR = {**demo.DEMO_DETECTOR, **json.loads(args.head)}
    out = args.out or Path(tempfile.mkdtemp(prefix="detect_experiment_"))
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run = demo.DemoRun(
        models=out / "models",
        results=out / "results",
        scene=make_scene(out / "data", args.size, args.seed),
        recipe=Recipe(
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr, seed=0
        ),
        hardware=Hardware(accelerator="cpu", devices=1),
        engine=Engine(device="cpu", batch_size=args.batch_size),
        tile_size=128 if args.size >= 640 else 64,
        overwrite=True,
        log=lambda _: None,
    )
    result = demo._detect(run)
    held = result["held_out"]
    figures = {k: held[k] for k in ("mAP", "mAP_07", "AP", "precision", "recall", "F1", "boxes_per_object", "objects")}
    print(
        json.dumps(
            {
                "head": demo.DEMO_DETECTOR,
                "recipe": vars(args) | {"out": str(out)},
                **figures,
                "score_thresholds": held["score_thresholds"],
                "train_seconds": result["train_seconds"],
                "predict_seconds": result["predict_seconds"],
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


def held_out_bounds(image: Path, val_fraction: float = 0.2) -> list[float]:
    """The demo detector's validation strip: the split detection training makes of the scene's footprint."""
    import rasterio

    from lemevit_geo.pipelines.training.train_data import spatial_split

    with rasterio.open(image) as src:
        return spatial_split(tuple(src.bounds), val_fraction)["report"]["val_bounds"]


def predict_only(out: Path, batch_size: int) -> dict:
    """Held-out figures of the bundle trained in ``out`` (no training: after a change to ``detect``)."""
    import geopandas as gpd

    from lemevit_geo.bundle import load_bundle
    from lemevit_geo.pipelines.apps.evaluate import evaluate_detections
    from lemevit_geo.pipelines.inference.detect import detect
    from lemevit_geo.settings import Detection

    net, config = load_bundle(out / "models" / "detect.safetensors")
    scene, engine = out / "data", Engine(device="cpu", batch_size=batch_size)
    default, every = out / "results" / "again.gpkg", out / "results" / "again_all.gpkg"
    start = time.perf_counter()
    found = detect(
        image=scene / "scene_before.tif",
        output=default,
        model=(net, config),
        tile_size=demo.DETECT_TILE,
        engine=engine,
        overwrite=True,
    )
    predict_s = time.perf_counter() - start
    detect(
        image=scene / "scene_before.tif",
        output=every,
        model=(net, config),
        tile_size=demo.DETECT_TILE,
        engine=engine,
        overwrite=True,
        detection=Detection(all_scores=True),
    )
    bounds = held_out_bounds(scene / "scene_before.tif")
    m = evaluate_detections(every, scene / "objects.gpkg", bounds=tuple(bounds))
    d = evaluate_detections(default, scene / "objects.gpkg", bounds=tuple(bounds))
    return {
        "mAP": round(m["mAP"], 4),
        "mAP_07": round(m["mAP_07"], 4),
        **d["as_written"],
        "objects_found_in_scene": found["objects"],
        "largest_box_m": round(float(gpd.read_file(default)["length"].max()), 2),
        "predict_seconds": round(predict_s, 1),
    }


if __name__ == "__main__":
    main()
