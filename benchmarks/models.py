"""Throughput of LeMeViT next to timm baselines, in one process on the same inputs.

Measures images/s for classification at 224 px (batch 16) and dense features at 512 px (batch 4),
in fp32 and with bf16 autocast (fp16 too on CUDA), and prints each model's ratio to lemevit_tiny.

    python benchmarks/models.py                       # CPU, all models
    python benchmarks/models.py --device cuda         # GPU: fp32, bf16, fp16
    python benchmarks/models.py --upstream /path/to/LeMeViT/models/lemevit.py   # add the upstream code

``--upstream`` loads the upstream implementation from a local checkout (it is not part of this
project) so that its tiny model is timed in the same run; at 512 px it runs its classification model (the
same backbone work, pooled), as upstream's ``models/lemevit.py`` has no feature-map output.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import timm
import torch

from lemevit_geo.device import autocast
from lemevit_geo.models import lemevit

BASELINES = ["pvt_v2_b1", "swin_tiny_patch4_window7_224", "resnet50"]
OURS = ["lemevit_tiny", "lemevit_small"]


def images_per_second(fn: Callable[[], object], batch: int, seconds: float, sync: Callable[[], None]) -> float:
    """Run ``fn`` repeatedly for about ``seconds`` after two warm-up calls; return images/s."""
    fn()
    fn()
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += batch
    sync()
    return n / (time.perf_counter() - start)


def build(name: str, dense: bool, upstream: object | None) -> torch.nn.Module:
    if name == "upstream_lemevit_tiny":
        # dense: the upstream code has no feature-map output in models/lemevit.py; its classification model
        # runs every stage over the 512 px input (convolutional position encoding) and pools: the backbone's
        # work of our features_only model plus a pooled head
        return upstream.lemevit_tiny()  # type: ignore[union-attr]
    # ours by their own entry points: an --upstream module registers the same names with timm
    create = getattr(lemevit, name) if name.startswith("lemevit_") else partial(timm.create_model, name)
    if not dense:
        return create()
    kwargs = {"img_size": 512} if name.startswith("swin") else {}
    return create(features_only=True, **kwargs)


def load_upstream(path: str) -> object:
    sys.path.insert(0, str(Path(path).resolve().parent))  # its own imports (and stubs) beside it
    spec = importlib.util.spec_from_file_location("lemevit_upstream", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["lemevit_upstream"] = module  # timm's register_model looks the module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--models", nargs="*", default=OURS + BASELINES)
    parser.add_argument("--upstream", help="path to upstream LeMeViT models/lemevit.py, timed beside ours")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    args = parser.parse_args()

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    precisions = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device.type == "cuda":
        precisions["fp16"] = torch.float16
    upstream = load_upstream(args.upstream) if args.upstream else None
    names = list(args.models) + (["upstream_lemevit_tiny"] if upstream else [])
    settings = {"classify 224px b16": (False, 16, 224), "dense 512px b4": (True, 4, 512)}

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    if device.type == "cuda":
        print(f"# {torch.cuda.get_device_name(device)}")
    results: dict[str, dict[str, float]] = {}
    torch.manual_seed(0)
    for setting, (dense, batch, size) in settings.items():
        x = torch.randn(batch, 3, size, size, device=device)
        models = {}
        for name in names:
            try:
                models[name] = build(name, dense, upstream).to(device).eval()
            except ValueError:
                continue
        for prec, dtype in precisions.items():
            runs: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(args.rounds):  # interleaved rounds: machine noise hits every model alike
                for name, model in models.items():
                    with torch.inference_mode(), autocast(device, dtype):
                        runs[name].append(images_per_second(partial(model, x), batch, args.seconds, sync))
            for name, values in runs.items():
                ips = statistics.median(values)
                results.setdefault(f"{setting} {prec}", {})[name] = ips
                spread = f"{min(values):.2f}-{max(values):.2f}"
                print(f"{setting:20s} {prec:5s} {name:30s} {ips:8.2f} img/s (rounds {spread})", flush=True)
        del models

    print("\n| setting | model | img/s | ratio to lemevit_tiny |\n| --- | --- | ---: | ---: |")
    for key, row in results.items():
        base = row.get("lemevit_tiny")
        for name, ips in row.items():
            ratio = f"{ips / base:.2f}" if base else "-"
            print(f"| {key} | {name} | {ips:.1f} | {ratio} |")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
