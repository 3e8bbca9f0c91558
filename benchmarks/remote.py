"""Remote inputs: bytes a run fetches from an HTTP server, for the whole scene and for areas (``--bbox``).

Writes a random-texture RGB COG (deflate, 256 px blocks, overviews), serves it from a local Range-capable
HTTP server that counts the body bytes it sends (``tests/remote_server.py``), and runs ``segment`` on its URL
with a LeMeViT-tiny bundle with random weights (bytes do not depend on weights). Prints one JSON line per run.

    python benchmarks/remote.py --size 4096 --areas 256,512,1024
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import cli_main  # noqa: E402
from tests.remote_server import FileServer  # noqa: E402

ORIGIN, GSD = (350_000.0, 5_600_000.0), 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="Scene side in pixels.")
    parser.add_argument("--areas", default="256,512,1024", help="Sides of the --bbox areas, in pixels.")
    parser.add_argument("--full", action="store_true", help="Also run the whole scene through the URL.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "srv").mkdir()
        cog = root / "srv" / "scene.tif"
        rng = np.random.default_rng(0)
        transform = from_origin(*ORIGIN, GSD, GSD)
        profile = dict(driver="COG", width=args.size, height=args.size, count=3, dtype="uint8", crs="EPSG:32632")
        with rasterio.open(cog, "w", transform=transform, blocksize=256, compress="deflate", **profile) as dst:
            dst.write(rng.integers(1, 255, (3, args.size, args.size), dtype=np.uint8))
        bundle = root / "seg.safetensors"
        init = ("bundle", "init", "--task", "segment", "--arch", "tiny", "--classes", "a,b,c", "--bands", "3")
        cli_main(*init, "--tile-size", "256", "-o", bundle)
        sides = [int(v) for v in args.areas.split(",")] + ([args.size] if args.full else [])
        for side in sides:
            server = FileServer(root / "srv")  # a new port per run: GDAL's /vsicurl/ cache starts empty
            start = (args.size - side) // 2
            x0, y1 = transform * (start, start)
            x1, y0 = transform * (start + side, start + side)
            area = [] if side == args.size else ["--bbox", f"{x0},{y0},{x1},{y1}", "--bbox-crs", "EPSG:32632"]
            t = time.perf_counter()
            out = root / f"out{side}.tif"
            r = cli_main("segment", f"{server.url}/scene.tif", *area, "-o", out, "-m", bundle, "--device", "cpu", "-q")
            seconds = time.perf_counter() - t
            server.stop()
            assert r.returncode == 0, r.stderr
            size = cog.stat().st_size
            row = {"scene_px": args.size, "area_px": side, "file_bytes": size, "bytes_sent": server.total}
            row |= {"share_of_file": round(server.total / size, 4), "area_share": round(side**2 / args.size**2, 4)}
            print(json.dumps(row | {"seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
