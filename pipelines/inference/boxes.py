"""Oriented boxes across tiles: the sink of ``detect`` (box geometry: :mod:`lemevit_geo.pipelines.geometry`).

Within a tile the model has already dropped low scores and run rotated NMS per class. :class:`BoxMerger`
puts the tiles' boxes together on the scene's grid, in grid order, holding at most two tile rows of boxes:

1. Boxes of classes not asked for, and boxes whose centre lies on nodata or outside the scene, are dropped.
   The score threshold is applied last, to the merged boxes (so a weak whole view of an object still
   makes a strong fragment of it give way).
2. Each box gets a *tier*: :data:`OWNED` when it lies whole in its tile and its centre falls in the part of
   the scene the tile owns (the stitcher's rule: neighbours meet in the middle of their overlap),
   :data:`FOREIGN` when whole but centred in a neighbour's part, :data:`CUT` when it reaches within
   :data:`EDGE_MARGIN` px of an inner tile edge (the object may go on beyond it; the neighbour sees it
   whole when the overlap is at least the object's size, and the tile owning its centre then does).
3. A box inside its tile's exclusive part (covered by no other tile) is final at once. The others are
   pooled and merged across tiles greedily in the order tier, score: a box is dropped when a kept box of
   another tile overlaps it with a rotated IoU above ``iou_threshold`` (same class when both have the same
   tier; any class when the kept box has a better tier), and a cut box also when more than
   :data:`FRAGMENT` of it lies in a kept box of a better tier. IoU is exact (polygon intersection).
   Before that, cut boxes of one class from different tiles that overlap and together fill a rectangle
   (:data:`PIECES`) are joined into one box around them: the pieces of an object longer than the overlap.
4. Pooled boxes are decided when a tile row is done: a kept box that no later tile can reach (it ends above
   the next tile row) is written, a box dropped by a written box is forgotten, the others wait a row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from lemevit_geo.pipelines.geometry import EDGE_MARGIN, box_polygons, rectangle_boxes
from lemevit_geo.pipelines.inference.engine import TileData
from lemevit_geo.pipelines.inference.tiling import Tile, TileGrid, ownership

#: Tiers of a box: whole and centred in the tile's own part; whole but centred in a neighbour's; cut.
OWNED, FOREIGN, CUT = 0, 1, 2
#: A cut box more than this share of which lies in a better box is a fragment of it.
FRAGMENT = 0.5
#: Overlapping cut boxes of one class are pieces of one object when their union fills this share of the
#: smallest rectangle around it.
PIECES = 0.9


@dataclass
class Boxes:
    """Boxes on the scene's pixel grid with their tier, source tile and arrival order.

    Attributes:
        rows: ``(N, 7)`` float64 ``[cx, cy, w, h, angle, score, class]`` in scene pixels (see
            :mod:`lemevit_geo.models.detection` for the conventions).
        tier: ``(N,)`` :data:`OWNED`, :data:`FOREIGN` or :data:`CUT`.
        tile: ``(N,)`` index of the tile that found the box.
        serial: ``(N,)`` arrival order (breaks ties deterministically).
        corners: ``(N, 4, 2)`` corners in scene pixels.
    """

    rows: np.ndarray
    tier: np.ndarray
    tile: np.ndarray
    serial: np.ndarray
    corners: np.ndarray

    @classmethod
    def empty(cls) -> Boxes:
        return cls(
            np.zeros((0, 7)), np.zeros(0, np.int8), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4, 2))
        )

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray) -> Boxes:
        """The boxes at ``index`` (indices or a boolean mask)."""
        return Boxes(self.rows[index], self.tier[index], self.tile[index], self.serial[index], self.corners[index])

    @staticmethod
    def concat(parts: Sequence[Boxes]) -> Boxes:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Boxes.empty()
        fields = ("rows", "tier", "tile", "serial", "corners")
        return Boxes(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    @property
    def bounds(self) -> np.ndarray:
        """``(N, 4)`` axis-aligned ``minx, miny, maxx, maxy`` in scene pixels."""
        return np.concatenate([self.corners.min(1), self.corners.max(1)], axis=1)


@dataclass(frozen=True)
class Axis:
    """One axis of the tile grid: each tile's owned range and the range no other tile covers."""

    offsets: list[int]
    owned: list[tuple[int, int]]
    exclusive: list[tuple[float, float]]

    @classmethod
    def of(cls, offsets: list[int], tile: int, size: int) -> Axis:
        n = len(offsets)
        exclusive = [
            (offsets[i - 1] + tile if i > 0 else -np.inf, offsets[i + 1] if i < n - 1 else np.inf) for i in range(n)
        ]
        return cls(offsets, ownership(offsets, tile, size), exclusive)

    def inner(self, i: int) -> tuple[bool, bool]:
        """Whether the tile's low and high edges on this axis are inner edges (a neighbour lies beyond)."""
        return i > 0, i < len(self.offsets) - 1


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected component label of each of ``n`` nodes linked by the edges ``(i, j)``."""
    parent = np.arange(n)

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        parent[root(a)] = root(b)
    return np.array([root(k) for k in range(n)])


def join_pieces(boxes: Boxes, limit: np.ndarray | float = 0.0) -> Boxes:
    """Join cut boxes of one class from different tiles that overlap and together fill a rectangle (see
    :data:`PIECES`) into one box around them, with the best score, tile and arrival of its pieces. A group
    linked pair by pair is joined only when all its pieces together fill their rectangle too (many weak boxes
    near seams would otherwise chain into one box hundreds of pixels long). Only pieces scoring above ``limit``
    (the output's score threshold, per box) are joined: boxes too weak to be written never make a piece."""
    cut = np.flatnonzero((boxes.tier == CUT) & (boxes.rows[:, 5] > limit))
    if len(cut) < 2:
        return boxes
    polys = shapely.polygons(boxes.corners[cut])
    i, j = shapely.STRtree(polys).query(polys, predicate="intersects")
    rows, tiles = boxes.rows[cut], boxes.tile[cut]
    sel = (i < j) & (tiles[i] != tiles[j]) & (rows[i, 6] == rows[j, 6])
    i, j = i[sel], j[sel]
    if not len(i):
        return boxes
    union = shapely.union(polys[i], polys[j])
    whole = shapely.area(union) >= PIECES * shapely.area(shapely.oriented_envelope(union))
    whole &= shapely.area(shapely.intersection(polys[i], polys[j])) > 0
    label = _components(len(cut), i[whole], j[whole])
    joined, members = [], []
    for group in np.unique(label):
        part = np.flatnonzero(label == group)
        if len(part) < 2:
            continue
        best = part[np.argmax(rows[part, 5])]
        ring = shapely.oriented_envelope(shapely.multipoints(boxes.corners[cut[part]].reshape(-1, 2)))
        if shapely.area(shapely.union_all(polys[part])) < PIECES * shapely.area(ring):
            continue  # a chain of overlapping pairs that together fill no rectangle: not one object
        corners = np.asarray(ring.exterior.coords)[None, :4]
        row = np.concatenate([rectangle_boxes(corners)[0], rows[best, 5:]])
        joined.append(Boxes(row[None], boxes.tier[cut[[best]]], tiles[[best]], boxes.serial[cut[[best]]], corners))
        members.extend(cut[part].tolist())
    alone = np.ones(len(boxes), dtype=bool)
    alone[members] = False
    return Boxes.concat([boxes.take(alone), *joined])


def conflicts(boxes: Boxes, rank: np.ndarray, fixed: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, ...]:
    """Pairs ``(better, worse)`` of boxes from different tiles where keeping ``better`` drops ``worse``."""
    polys = shapely.polygons(boxes.corners)
    i, j = shapely.STRtree(polys).query(polys, predicate="intersects")
    sel = (rank[i] < rank[j]) & (boxes.tile[i] != boxes.tile[j]) & ~fixed[j]
    hi, lo = i[sel], j[sel]
    if not len(hi):
        return hi, lo
    inter = shapely.area(shapely.intersection(polys[hi], polys[lo]))
    area = boxes.rows[:, 2] * boxes.rows[:, 3]
    iou = inter / np.maximum(area[hi] + area[lo] - inter, 1e-12)
    over = iou > iou_threshold
    same_class = boxes.rows[hi, 6] == boxes.rows[lo, 6]
    same_tier = boxes.tier[hi] == boxes.tier[lo]
    fragment = (boxes.tier[lo] == CUT) & (inter > FRAGMENT * area[lo])
    drop = np.where(same_tier, same_class & over, over | fragment)
    return hi[drop], lo[drop]


def merge(boxes: Boxes, fixed: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy merge of pooled boxes across tiles (see the module docstring).

    ``fixed`` boxes were written before: they are kept and only drop others. Returns the kept mask and the
    pairs ``(kept box, box it dropped)``.
    """
    n = len(boxes)
    order = np.lexsort((boxes.serial, -boxes.rows[:, 5], boxes.tier, ~fixed))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    hi, lo = conflicts(boxes, rank, fixed, iou_threshold)
    sort = np.argsort(rank[hi], kind="stable")
    hi, lo = hi[sort], lo[sort]
    kept = np.ones(n, dtype=bool)
    for a, b in zip(hi.tolist(), lo.tolist(), strict=True):
        if kept[a]:  # every pair of a better box was seen before this one: its fate is known
            kept[b] = False
    dropped_by = kept[hi]
    return kept, hi[dropped_by], lo[dropped_by]


class BoxMerger:
    """Sink of ``detect``: per-tile detections ``(max_detections, 7)`` merged across tiles into scene boxes.

    Args:
        grid: The tile grid of the run.
        write: Called with finished boxes ``(N, 7)`` in scene pixels, one call per finished tile row.
        iou_threshold: Rotated IoU above which boxes of two tiles are one object.
        keep_classes: Class indices to keep (``None``: all).
        score_threshold: Boxes written score above this (after merging): one value, or one per class index.
        rows: The tile rows ``[first, stop)`` that will be added (a strip of a scale-out part; default: all).
        own: Write only the boxes whose centre lies in these scene rows ``[y0, y1)`` (a strip's own objects).
        join_threshold: Only cut boxes scoring above this (one value, or one per class index) are joined as
            pieces of one object (``detect``: the bundle's calibrated thresholds, whatever ``score_threshold``
            is, so that every threshold keeps a subset of the boxes of a lower one).
    """

    def __init__(
        self,
        grid: TileGrid,
        write: Callable[[np.ndarray], None],
        iou_threshold: float,
        keep_classes: Sequence[int] | None = None,
        score_threshold: float | Sequence[float] = 0.0,
        rows: tuple[int, int] | None = None,
        own: tuple[float, float] | None = None,
        join_threshold: float | Sequence[float] = 0.0,
    ) -> None:
        self.grid, self.write, self.iou_threshold = grid, write, iou_threshold
        first, stop = rows or (0, len(grid.ys))
        self.expected, self.own = (stop - first) * len(grid.xs), own
        self.score_threshold = np.asarray(score_threshold, dtype=np.float64)
        self.join_threshold = np.asarray(join_threshold, dtype=np.float64)
        self.keep = None if keep_classes is None else np.asarray(sorted(keep_classes), dtype=np.int64)
        self.xs = Axis.of(grid.xs, grid.tile, grid.width)
        self.ys = Axis.of(grid.ys, grid.tile, grid.height)
        self.row = -1
        self.serial = 0
        self.seen = 0  # tiles added or skipped
        self.done: list[Boxes] = []  # final boxes of the current tile row (exclusive parts)
        self.pending = Boxes.empty()  # pooled, undecided
        self.recent = Boxes.empty()  # written at the last row end: they still drop cut boxes reaching up
        self.counts = {"found": 0, "written": 0, "merged": 0, "partial": 0}
        self.rows_run: list[int] = []  # the tile row of each tile run (not skipped as nodata)

    def add(self, item: TileData, output: np.ndarray) -> None:
        """Take one tile's detections."""
        self._advance(item.tile)
        self.seen += 1
        self.rows_run.append(item.tile.row)
        boxes = self._tile_boxes(item, np.asarray(output, dtype=np.float64).reshape(-1, 7))
        self.counts["found"] += len(boxes)
        lo, hi = boxes.bounds[:, :2], boxes.bounds[:, 2:]
        (x0, x1), (y0, y1) = self.xs.exclusive[item.tile.col], self.ys.exclusive[item.tile.row]
        alone = (lo[:, 0] >= x0) & (hi[:, 0] <= x1) & (lo[:, 1] >= y0) & (hi[:, 1] <= y1)
        self.done.append(boxes.take(alone))
        self.pending = Boxes.concat([self.pending, boxes.take(~alone)])

    def skip(self, item: TileData) -> None:
        """A tile without valid pixels has no boxes, but it may finish a tile row."""
        self._advance(item.tile)
        self.seen += 1

    def close(self) -> None:
        """Decide and write everything left; after a run that stopped early (an error), write nothing more."""
        if self.seen == self.expected:
            self._finish_row(np.inf)

    def _advance(self, tile: Tile) -> None:
        if tile.row != self.row:
            if self.row >= 0:
                self._finish_row(float(tile.y))
            self.row = tile.row

    def _tile_boxes(self, item: TileData, rows: np.ndarray) -> Boxes:
        """The usable boxes of one tile, moved onto the scene's grid, with their tiers."""
        tile, size = item.tile, item.tile.size
        rows = rows[(rows[:, 6] >= 0) & (rows[:, 5] > 0)]
        if self.keep is not None:
            rows = rows[np.isin(rows[:, 6].astype(np.int64), self.keep)]
        cx, cy = rows[:, 0], rows[:, 1]
        inside = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
        col = np.clip(cx, 0, size - 1).astype(np.int64)
        row = np.clip(cy, 0, size - 1).astype(np.int64)
        rows = rows[inside & item.valid[row, col]]
        corners = box_polygons(rows[:, :5])
        lo, hi = corners.min(1), corners.max(1)
        cut = np.zeros(len(rows), dtype=bool)
        for axis, i, k in ((self.xs, tile.col, 0), (self.ys, tile.row, 1)):
            low_inner, high_inner = axis.inner(i)
            cut |= low_inner & (lo[:, k] < EDGE_MARGIN)
            cut |= high_inner & (hi[:, k] > size - EDGE_MARGIN)
        shift = np.array([tile.x, tile.y], dtype=np.float64)
        rows[:, :2] += shift
        corners += shift
        (ox0, ox1), (oy0, oy1) = self.xs.owned[tile.col], self.ys.owned[tile.row]
        owned = (rows[:, 0] >= ox0) & (rows[:, 0] < ox1) & (rows[:, 1] >= oy0) & (rows[:, 1] < oy1)
        tier = np.where(cut, CUT, np.where(owned, OWNED, FOREIGN)).astype(np.int8)
        serial = np.arange(self.serial, self.serial + len(rows))
        self.serial += len(rows)
        return Boxes(rows, tier, np.full(len(rows), tile.index, dtype=np.int64), serial, corners)

    @staticmethod
    def _limit(rows: np.ndarray, threshold: np.ndarray) -> np.ndarray:
        """The ``threshold`` (one, or one per class) of each box ``rows`` ``(N, 7)``."""
        if not threshold.ndim:
            return np.full(len(rows), float(threshold))
        return threshold[rows[:, 6].astype(np.int64)]

    def _finish_row(self, limit: float) -> None:
        """Decide the pooled boxes that no tile after this row can reach (they end above ``limit``)."""
        self.pending = join_pieces(self.pending, self._limit(self.pending.rows, self.join_threshold))
        pool = Boxes.concat([self.recent, self.pending])
        fixed = np.arange(len(pool)) < len(self.recent)
        kept, hi, lo = merge(pool, fixed, self.iou_threshold)
        final = fixed | (kept & (pool.bounds[:, 3] <= limit))
        gone = np.zeros(len(pool), dtype=bool)
        gone[lo[final[hi]]] = True
        emit = kept & final & ~fixed
        self.counts["merged"] += int(gone.sum())
        self.pending = pool.take(~final & ~gone)
        out = Boxes.concat([*self.done, pool.take(emit)])
        self.done = []
        self.recent = out
        keep = out.rows[:, 5] > self._limit(out.rows, self.score_threshold)
        if self.own is not None:
            keep &= (out.rows[:, 1] >= self.own[0]) & (out.rows[:, 1] < self.own[1])
        out = out.take(keep)
        if len(out):
            self.counts["written"] += len(out)
            self.counts["partial"] += int((out.tier == CUT).sum())
            self.write(out.rows)
