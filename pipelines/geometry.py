"""Rotated boxes and polygons in pixel and map units (numpy and shapely): the geometry that detection
inference (the box sink and its map output), the detection metrics and the detection training data share.

Rotated boxes ``(cx, cy, w, h, angle)`` follow :mod:`lemevit_geo.models.rotated` (which holds the torch ops
the model trains and runs with: loss, NMS): radians, the ``w`` side along ``(cos a, sin a)`` in a frame with
y pointing down. Rows of detections are ``(N, 7)`` ``[cx, cy, w, h, angle, score, class]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine

#: A box reaching this close (px) to an inner tile edge may be cut by it.
EDGE_MARGIN = 2.0
#: Columns of the vector output of ``detect``, besides the geometry.
COLUMNS = ["class_id", "class_name", "score", "angle", "length", "width", "area"]


def box_polygons(boxes: np.ndarray) -> np.ndarray:
    """Corners ``(N, 4, 2)`` of rotated boxes ``(N, 5)`` ``(cx, cy, w, h, angle)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    cx, cy, w, h, a = boxes.T
    cos, sin = np.cos(a), np.sin(a)
    u = w[:, None] * np.array([-0.5, 0.5, 0.5, -0.5])
    v = h[:, None] * np.array([-0.5, -0.5, 0.5, 0.5])
    x = cx[:, None] + u * cos[:, None] - v * sin[:, None]
    y = cy[:, None] + u * sin[:, None] + v * cos[:, None]
    return np.stack([x, y], axis=-1)


def overlap_for(extent: float, tile: int) -> int:
    """The tile overlap (px) that lets one tile see an object of ``extent`` px along x and y whole and away
    from its edges (:data:`EDGE_MARGIN`), rounded up to 8 px, at most half the tile."""
    need = math.ceil((extent + 2 * EDGE_MARGIN + 2) / 8) * 8
    return int(min(max(need, 8), tile // 2))


def rectangle_boxes(corners: np.ndarray) -> np.ndarray:
    """Boxes ``(N, 5)`` of rectangles given by their corners ``(N, 4, 2)`` (in ring order), named with
    ``w >= h`` and the angle in ``[-pi/2, pi/2)``."""
    s1, s2 = corners[:, 1] - corners[:, 0], corners[:, 3] - corners[:, 0]
    w, h = np.hypot(s1[:, 0], s1[:, 1]), np.hypot(s2[:, 0], s2[:, 1])
    side = np.where((w >= h)[:, None], s1, s2)
    angle = (np.arctan2(side[:, 1], side[:, 0]) + np.pi / 2) % np.pi - np.pi / 2
    centre = corners.mean(1)
    return np.stack([centre[:, 0], centre[:, 1], np.maximum(w, h), np.minimum(w, h), angle], axis=1)


def to_pixels(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Geometries in map coordinates to the pixel frame of ``transform``."""
    inv = ~transform
    return shapely.transform(
        geoms,
        lambda xy: np.column_stack(
            [inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c, inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f]
        ),
    )


def pixel_boxes(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Each polygon's smallest rotated rectangle in the pixel frame of ``transform``, as boxes ``(N, 5)``."""
    rects = shapely.oriented_envelope(to_pixels(geoms, transform))
    corners = (
        np.stack([np.asarray(shapely.get_coordinates(r))[:4] for r in rects]) if len(rects) else np.zeros((0, 4, 2))
    )
    return rectangle_boxes(corners)


def largest_extent(boxes: Sequence[np.ndarray]) -> float:
    """The largest extent along x or y (px) of any of the boxes ``(N, 5)``."""
    return max((float(np.ptp(box_polygons(b), axis=1).max()) for b in boxes if len(b)), default=0.0)


def box_features(rows: np.ndarray, transform: Affine, classes: Sequence[str], crs: object | None) -> gpd.GeoDataFrame:
    """Boxes ``(N, 7)`` in scene pixels as polygons in map coordinates, with their measures.

    The corners are mapped through ``transform`` (any affine grid: north-up, y-flipped, rotated or with
    non-square pixels) and measured there: ``length`` is the longer side, ``width`` the area divided by it
    (the shorter side for a rectangle; grids with non-square pixels turn rotated rectangles into
    parallelograms), ``area`` in CRS units squared, and ``angle`` the direction of the longer side in
    degrees counter-clockwise from the map's x axis (east), in ``[0, 180)``. Rings run counter-clockwise.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    px = box_polygons(rows[:, :5])
    a, b, c, d, e, f = (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)
    pts = np.stack([a * px[..., 0] + b * px[..., 1] + c, d * px[..., 0] + e * px[..., 1] + f], axis=-1)
    s1, s2 = pts[:, 1] - pts[:, 0], pts[:, 3] - pts[:, 0]
    l1, l2 = np.hypot(s1[:, 0], s1[:, 1]), np.hypot(s2[:, 0], s2[:, 1])
    cross = s1[:, 0] * s2[:, 1] - s1[:, 1] * s2[:, 0]
    length = np.maximum(l1, l2)
    long_side = np.where((l1 >= l2)[:, None], s1, s2)
    angle = np.degrees(np.arctan2(long_side[:, 1], long_side[:, 0])) % 180.0
    pts = np.where((cross < 0)[:, None, None], pts[:, ::-1], pts)  # counter-clockwise rings
    ids = rows[:, 6].astype(np.int64)
    table = {
        "class_id": ids,
        "class_name": [classes[i] for i in ids],
        "score": rows[:, 5],
        "angle": np.where(angle >= 180.0 - 1e-9, 0.0, angle),
        "length": length,
        "width": np.abs(cross) / np.maximum(length, 1e-300),
        "area": np.abs(cross),
    }
    return gpd.GeoDataFrame(table, columns=COLUMNS, geometry=shapely.polygons(pts), crs=crs)
