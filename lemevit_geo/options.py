"""Command-line option types shared by the commands (Typer ``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lemevit_geo.choices import Arch, Precision, Stitch, Task

Image = Annotated[
    Path, typer.Argument(help="Input raster (GeoTIFF, COG, VRT: anything GDAL reads).", show_default=False)
]
Output = Annotated[Path, typer.Option("--output", "-o", help="Output file.", show_default=False)]
Model = Annotated[Path, typer.Option("--model", "-m", help="Model bundle (.safetensors).", show_default=False)]
ArchOpt = Annotated[Arch, typer.Option("--arch", help="LeMeViT size.")]
TaskOpt = Annotated[Task, typer.Option("--task", help="What the model predicts.")]
Bands = Annotated[
    str | None, typer.Option("--bands", help="Input bands to use, 1-based and in model order, e.g. 4,3,2.")
]
TileSize = Annotated[int | None, typer.Option("--tile-size", help="Tile side in pixels (default: the bundle's).")]
Overlap = Annotated[
    int | None, typer.Option("--overlap", help="Overlap of neighbouring tiles in pixels (default: tile/8).")
]
StitchOpt = Annotated[Stitch, typer.Option("--stitch", help="Seams: centre crops, or smooth blending of logits.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Tiles per model call.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help="Compute precision (auto: bf16/fp16 where fast).")]
Threads = Annotated[int, typer.Option("--threads", help="Background reader threads.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
Cog = Annotated[bool, typer.Option("--cog", help="Write a Cloud Optimized GeoTIFF.")]
AllowPixelGrid = Annotated[
    bool, typer.Option("--allow-pixel-grid", help="Accept rasters without CRS/geotransform (pixel coordinates).")
]
Probabilities = Annotated[
    Path | None, typer.Option("--probabilities", help="Also write per-class probabilities (uint8, 0..254).")
]
Vector = Annotated[Path | None, typer.Option("--vector", help="Also write polygons (.gpkg, .parquet, .geojson).")]
MinArea = Annotated[float, typer.Option("--min-area", help="Drop polygons smaller than this (CRS units squared).")]
Simplify = Annotated[
    float, typer.Option("--simplify", help="Simplify polygons by this tolerance (CRS units), keeping shared edges.")
]
