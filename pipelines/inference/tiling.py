"""The tile grid: overlapping windows over a scene, which output pixels each tile owns, and strips of tile rows
that separate processes can run on their own (scale-out parts)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lemevit_geo.choices import Stitch

#: Test hook: with False, strips run no halo rows, so blended rows next to a strip's top differ from a
#: single-process run (the negative control of the scale-out identity test). Never False in use.
HALO = True


def tile_offsets(size: int, tile: int, stride: int, fit: bool) -> list[int]:
    """Offsets of tiles of side ``tile`` every ``stride`` pixels along an axis of ``size`` pixels.

    With ``fit`` the last tile is moved back to end at the scene's edge (full context, no padding,
    when the scene is at least one tile long); without, tiles keep a regular grid and the last one
    reaches past the edge (it is padded when read).
    """
    if size <= tile:
        return [0]
    offsets = list(range(0, size - tile + 1, stride))
    if offsets[-1] + tile < size:
        offsets.append(size - tile if fit else offsets[-1] + stride)
    return offsets


def ownership(offsets: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """For each tile, the half-open range of output pixels it alone writes in crop mode.

    The boundary between two overlapping neighbours is the middle of their overlap, so every pixel
    comes from the central part of one tile; the first and last tiles reach the scene's edges.
    """
    bounds = [0]
    for a, b in zip(offsets, offsets[1:], strict=False):
        bounds.append((b + min(a + tile, size)) // 2)
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """Smooth 2-D weights for blending: a raised-cosine ramp over the overlap on each side, 1 inside.

    The ramp never reaches 0, so edge pixels that only one tile covers still get a weight.
    """
    ramp = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        n = min(overlap, tile // 2)
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n, dtype=np.float32) + 0.5) / n)
        ramp[:n] = r
        ramp[tile - n :] = r[::-1]
    return np.outer(ramp, ramp)


@dataclass(frozen=True)
class Tile:
    """One window of the grid: its position in the tile grid and in the scene."""

    index: int
    row: int  # tile-grid row
    col: int  # tile-grid column
    y: int  # scene row of the top-left pixel (may reach past the scene when padded)
    x: int
    size: int

    def clipped(self, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of this tile that lie inside the scene."""
        return min(self.size, height - self.y), min(self.size, width - self.x)


@dataclass(frozen=True)
class TileGrid:
    """Tiles over a ``height`` x ``width`` scene, in row-major order."""

    height: int
    width: int
    tile: int
    overlap: int
    fit: bool = True

    def __post_init__(self) -> None:
        if self.tile % 32:
            raise ValueError(
                f"tile size {self.tile} is not a multiple of 32 (try {32 * max(1, round(self.tile / 32))})"
            )
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap {self.overlap} must be at least 0 and less than the tile size {self.tile}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def ys(self) -> list[int]:
        return tile_offsets(self.height, self.tile, self.stride, self.fit)

    @property
    def xs(self) -> list[int]:
        return tile_offsets(self.width, self.tile, self.stride, self.fit)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def tiles(self, rows: tuple[int, int] | None = None) -> list[Tile]:
        """The tiles in row-major order; only those of tile rows ``[rows[0], rows[1])`` if given."""
        xs, ys = self.xs, self.ys
        r0, r1 = rows or (0, len(ys))
        return [Tile(r * len(xs) + c, r, c, ys[r], x, self.tile) for r in range(r0, r1) for c, x in enumerate(xs)]


def finished_rows(grid: TileGrid, stitch: Stitch) -> list[tuple[int, int]]:
    """For each tile row, the half-open range of scene rows it finishes.

    ``crop``: the rows its tiles own. ``blend``: rows ``[ys[r], ys[r + 1])``, which no later tile row
    touches; the rows below its top carry over to the next tile row.
    """
    ys = grid.ys
    if Stitch(stitch) == Stitch.crop:
        return ownership(ys, grid.tile, grid.height)
    return [(y, ys[r + 1] if r + 1 < len(ys) else grid.height) for r, y in enumerate(ys)]


def halo_start(grid: TileGrid, first: int, stitch: Stitch) -> int:
    """The first tile row a strip that outputs from tile row ``first`` on must run.

    ``blend``: every earlier tile row whose tiles reach past ``ys[first]`` adds to the rows ``first`` finishes
    (with a fit-to-edge grid the last row can overlap more than one row back); running them rebuilds the carry
    exactly. ``crop``: each pixel comes from one tile, so no halo.
    """
    if Stitch(stitch) == Stitch.crop or not HALO:
        return first
    ys = grid.ys
    return next(q for q in range(first + 1) if ys[q] + grid.tile > ys[first])


@dataclass(frozen=True)
class Strip:
    """A full-width strip of tile rows: the part runs tile rows ``[halo, stop)`` and writes the scene rows
    ``[y0, y1)`` that tile rows ``[first, stop)`` finish."""

    halo: int
    first: int
    stop: int
    y0: int
    y1: int


def strips(grid: TileGrid, count: int, stitch: Stitch) -> list[Strip]:
    """Split ``grid`` into ``count`` strips of as equal numbers of tile rows as can be (fewer if it has fewer
    tile rows), each with the halo rows it needs."""
    rows = finished_rows(grid, stitch)
    n = max(1, min(count, len(rows)))
    bounds = [k * len(rows) // n for k in range(n + 1)]
    return [
        Strip(halo_start(grid, r0, stitch), r0, r1, rows[r0][0], rows[r1 - 1][1])
        for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True)
    ]
