"""Map report figures: page size, peak memory and time against the scene's size (issue 22).

One 2048 px tile (an image of 3 bands and a class raster, each with internal overviews, as a COG has) is
repeated as an N x N mosaic (a GDAL VRT), so scenes of 2k, 8k, 20k and 200k px a side cost no disk. The
report of each (the quick-look and the class layer with its legend shares) is built with the library code
that ``--report`` runs; the legend's exact shares come from counts given as a run's summary gives them
(counting a 200k px raster is the run's own job).

    python benchmarks/report.py                  # mosaics of 1, 4, 10 and 100 tiles a side
    python benchmarks/report.py --tiles 1,4
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from lemevit_geo.pipelines.report.overview import OverviewGrid
from lemevit_geo.pipelines.report.page import MapReport

TILE = 2048


def write_tile(folder: Path) -> tuple[Path, Path]:
    """A textured 3-band image and a 3-class raster (colour table, names), both with overviews."""
    yy, xx = np.mgrid[:TILE, :TILE].astype(np.float32)
    rng = np.random.default_rng(0)
    base = 120 + 60 * np.sin(xx / 97) * np.cos(yy / 131)
    image = np.stack([base + rng.normal(0, 12, base.shape) + 20 * k for k in range(3)]).clip(0, 255).astype(np.uint8)
    classes = (((np.sin(xx / 97) * np.cos(yy / 131)) + 1) * 1.5).clip(0, 2).astype(np.uint8)[None]
    profile = dict(driver="GTiff", width=TILE, height=TILE, crs="EPSG:32633", tiled=True, compress="deflate")
    profile["transform"] = from_origin(500_000, 5_000_000, 0.5, 0.5)
    paths = folder / "image.tif", folder / "classes.tif"
    for path, data in zip(paths, (image, classes), strict=True):
        with rasterio.open(path, "w", count=len(data), dtype="uint8", **profile) as dst:
            dst.write(data)
            if len(data) == 1:
                dst.write_colormap(1, {0: (30, 90, 200, 255), 1: (40, 160, 60, 255), 2: (200, 60, 60, 255)})
                dst.update_tags(1, CLASS_0="water", CLASS_1="vegetation", CLASS_2="built-up")
            dst.build_overviews([2, 4, 8, 16], rasterio.enums.Resampling.nearest)
    return paths


def mosaic(tile: Path, n: int, out: Path) -> Path:
    """An N x N VRT mosaic of ``tile`` (the same bytes repeated, side by side)."""
    with rasterio.open(tile) as src:
        count, colors = src.count, src.colormap(1) if src.count == 1 else None
    bands = []
    for b in range(1, count + 1):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT='0'>{tile}</SourceFilename><SourceBand>{b}</SourceBand>"
            f"<SrcRect xOff='0' yOff='0' xSize='{TILE}' ySize='{TILE}'/>"
            f"<DstRect xOff='{c * TILE}' yOff='{r * TILE}' xSize='{TILE}' ySize='{TILE}'/></SimpleSource>"
            for r in range(n)
            for c in range(n)
        )
        table = "".join(f"<Entry c1='{v[0]}' c2='{v[1]}' c3='{v[2]}' c4='255'/>" for v in (colors or {}).values())
        extra = f"<ColorInterp>Palette</ColorInterp><ColorTable>{table}</ColorTable>" if colors else ""
        extra += "<Metadata><MDI key='CLASS_0'>water</MDI><MDI key='CLASS_1'>vegetation</MDI>" if colors else ""
        extra += "<MDI key='CLASS_2'>built-up</MDI></Metadata>" if colors else ""
        bands.append(f"<VRTRasterBand dataType='Byte' band='{b}'>{extra}{sources}</VRTRasterBand>")
    out.write_text(
        f"<VRTDataset rasterXSize='{n * TILE}' rasterYSize='{n * TILE}'><SRS>EPSG:32633</SRS>"
        f"<GeoTransform>500000, 0.5, 0, 5000000, 0, -0.5</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", default="1,4,10,100", help="Mosaic sizes, in 2048 px tiles a side.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image, classes = write_tile(folder)
        print("| scene (px a side) | overview | page (MB) | seconds | peak RSS (MB) |\n| --- | --- | --- | --- | --- |")
        for n in map(int, args.tiles.split(",")):
            start = time.perf_counter()
            grid = OverviewGrid.of(mosaic(image, n, folder / f"image{n}.vrt"))
            report = MapReport(f"{n * TILE} px", grid)
            report.add_base("image", folder / f"image{n}.vrt")
            counts = {"water": n * n, "vegetation": n * n, "built-up": n * n}
            report.add_classes("classes", mosaic(classes, n, folder / f"classes{n}.vrt"), counts)
            size = report.write(folder / f"report{n}.html").stat().st_size
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {n * TILE:,} | {grid.width} x {grid.height} | {size / 1e6:.2f} | {seconds:.1f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
