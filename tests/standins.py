"""A stand-in detector with exact geometry, and scenes of painted objects for it (tests and benchmarks).

Objects are painted as rotated rectangles: band 1 bright, band 2 ``60 * (class + 1)``, band 3 noise-free 0.
:class:`BlobDetector` finds every 4-connected blob of bright pixels in a tile and reports the smallest
rotated rectangle around its pixel squares, its class from band 2 and a score from its pixel count. A
blob seen whole gives the same box in every tile (translated), so merged tiled output can be compared
with the detector run on the whole scene at once.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
import torch
from scipy import ndimage

from lemevit_geo.bundle import BundleConfig
from lemevit_geo.models.rotated import polygon_to_box

CLASSES = ["car", "truck", "container"]


def paint(height: int, width: int, objects: list[tuple[float, ...]]) -> np.ndarray:
    """A 3-band uint8 scene with ``objects`` ``(cx, cy, w, h, angle, class)`` painted (pixel centres inside)."""
    img = np.zeros((3, height, width), dtype=np.uint8)
    for cx, cy, w, h, a, c in objects:
        r = math.hypot(w, h) / 2 + 1
        x0, y0 = max(0, int(cx - r)), max(0, int(cy - r))
        x1, y1 = min(width, int(math.ceil(cx + r))), min(height, int(math.ceil(cy + r)))
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
        ox = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
        oy = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
        inside = (np.abs(ox) < w / 2) & (np.abs(oy) < h / 2)
        img[0, y0:y1, x0:x1][inside] = 200
        img[1, y0:y1, x0:x1][inside] = 60 * (int(c) + 1)
    return img


def random_objects(
    rng: np.random.Generator, height: int, width: int, n: int, sizes: tuple[float, float] = (5, 12), gap: float = 3
) -> list[tuple[float, ...]]:
    """Up to ``n`` non-touching rotated rectangles inside the scene (sides within ``sizes``)."""
    placed: list[tuple[float, ...]] = []
    for _ in range(20 * n):
        if len(placed) == n:
            break
        w, h = sorted(rng.uniform(*sizes, 2), reverse=True)
        a = rng.uniform(-math.pi / 2, math.pi / 2) if rng.random() < 0.7 else 0.0
        r = math.hypot(w, h) / 2
        cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
        add(placed, (cx, cy, w, h, a, int(rng.integers(0, len(CLASSES)))), gap)
    return placed


def add(placed: list[tuple[float, ...]], obj: tuple[float, ...], gap: float = 3) -> bool:
    """Append ``obj`` unless its circumcircle comes within ``gap`` of another's."""
    r = math.hypot(obj[2], obj[3]) / 2
    if any(math.hypot(obj[0] - o[0], obj[1] - o[1]) < r + math.hypot(o[2], o[3]) / 2 + gap for o in placed):
        return False
    placed.append(obj)
    return True


def blob_boxes(image: np.ndarray, max_det: int = 10_000) -> np.ndarray:
    """Boxes ``(N, 7)`` of the bright blobs of one ``(C, H, W)`` image, in pixel coordinates, best first."""
    labels, n = ndimage.label(image[0] > 100)
    rows = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        r, c = np.nonzero(labels[sl] == k)
        r, c = r + sl[0].start, c + sl[1].start
        pts = np.concatenate([np.stack([c + dx, r + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(np.float64)
        rect = shapely.minimum_rotated_rectangle(shapely.multipoints(pts))
        corners = torch.tensor(np.asarray(rect.exterior.coords)[:4])
        box = polygon_to_box(corners.double()).numpy()
        cls = round(float(image[1][r, c].mean()) / 60) - 1
        score = 0.5 + 0.49 * ((len(r) * 0.6180339887) % 1.0)
        rows.append([*box, score, cls])
    out = np.array(rows, dtype=np.float64).reshape(-1, 7)
    return out[np.argsort(-out[:, 5], kind="stable")][:max_det]


class BlobDetector(torch.nn.Module):
    """Detector stand-in: eval-mode output ``(B, max_detections, 7)`` from :func:`blob_boxes` of each tile."""

    def __init__(self, max_detections: int = 256) -> None:
        super().__init__()
        self.score_threshold, self.iou_threshold = 0.05, 0.1
        self.pre_nms_top_k, self.max_detections = 1000, max_detections
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.max_detections, 7)
        out[..., 6] = -1
        for b, image in enumerate(x.float().cpu().numpy()):
            rows = blob_boxes(image, self.max_detections)
            rows = rows[rows[:, 5] > self.score_threshold]
            out[b, : len(rows)] = torch.from_numpy(rows)
        self.calls += 1
        return out


def blob_config(tile_size: int = 64, overlap: int | None = None) -> BundleConfig:
    """A detection bundle config for :class:`BlobDetector` (identity normalisation: it sees raw values)."""
    return BundleConfig(
        task="detect",
        arch="tiny",
        classes=list(CLASSES),
        bands=3,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        tile_size=tile_size,
        overlap=overlap,
    )
