"""Rotated-box geometry in torch: encoding, corners, Gaussians, Gaussian box losses, exact IoU, rotated NMS.

A rotated box is a row ``(cx, cy, w, h, angle)`` in the pixel coordinates of an image: x to the right,
y **down**, the image's top-left corner at (0, 0) (pixel centres at half-integers). ``angle`` is in
radians and is the direction of the box's ``w`` side measured from the image x axis towards the image
y axis, i.e. clockwise on screen (the OpenCV / DOTA / mmrotate convention). The ``w`` side runs along
``(cos a, sin a)``, the ``h`` side along ``(-sin a, cos a)``. A box has many names: ``(w, h, a)``,
``(w, h, a + pi)`` and ``(h, w, a + pi / 2)`` are the same box. :func:`regularize_boxes` picks one:
``w >= h`` and ``angle`` in ``[-pi/2, pi/2)`` (mmrotate's "le90").

Gaussian box losses (no angle boundary problem, since a box's Gaussian is the same for all its names):

- ProbIoU: Llerena, Zeni, Kristen, Jung, "Gaussian Bounding Boxes and Probabilistic Intersection-over-Union
  for Object Detection", arXiv:2106.06072 (2021). The box is the uniform distribution over it (covariance
  ``R diag(w^2/12, h^2/12) R^T``); the loss is the Hellinger distance between the two Gaussians,
  ``sqrt(1 - exp(-B_D))`` with ``B_D`` the Bhattacharyya distance. Symmetric, bounded in [0, 1].
- KLD: Yang, Yang, Yan, Zhang, Zhang, Tian, "Learning High-Precision Bounding Box for Rotated Object
  Detection via Kullback-Leibler Divergence", NeurIPS 2021. Covariance ``R diag(w^2/4, h^2/4) R^T``;
  ``D = KL(N_pred || N_target)`` turned into ``1 - 1 / (1 + ln(1 + D))``. Not symmetric.

Rotated IoU: :func:`box_iou_rotated` is torchvision's exact kernel (all pairs), :func:`pairwise_iou_rotated`
an exact vectorised convex-polygon intersection of matched pairs (used by :func:`nms_rotated` on the few
pairs whose axis-aligned bounding boxes meet, which keeps NMS fast on CPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = [
    "box_iou_rotated",
    "box_to_corners",
    "box_to_gaussian",
    "decode_distances",
    "encode_distances",
    "gaussian_box_loss",
    "kld_loss",
    "nms_rotated",
    "pairwise_iou_rotated",
    "polygon_to_box",
    "probiou_loss",
    "regularize_boxes",
]

_EPS = 1e-7


def regularize_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Name each box ``(..., 5)`` canonically: ``w >= h`` and ``angle`` in ``[-pi/2, pi/2)``."""
    cx, cy, w, h, a = boxes.unbind(-1)
    swap = w < h
    w, h = torch.where(swap, h, w), torch.where(swap, w, h)
    a = torch.where(swap, a + math.pi / 2, a)
    a = torch.remainder(a + math.pi / 2, math.pi) - math.pi / 2
    return torch.stack([cx, cy, w, h, a], dim=-1)


def box_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """Corners ``(..., 4, 2)`` of boxes ``(..., 5)``, in order (-w/2, -h/2), (w/2, -h/2), (w/2, h/2), (-w/2, h/2)
    of the box's own frame (clockwise on screen for a positive ``w`` and ``h``)."""
    cx, cy, w, h, a = boxes.unbind(-1)
    cos, sin = torch.cos(a), torch.sin(a)
    sx = torch.tensor([-0.5, 0.5, 0.5, -0.5], dtype=boxes.dtype, device=boxes.device)
    sy = torch.tensor([-0.5, -0.5, 0.5, 0.5], dtype=boxes.dtype, device=boxes.device)
    u, v = w[..., None] * sx, h[..., None] * sy
    x = cx[..., None] + u * cos[..., None] - v * sin[..., None]
    y = cy[..., None] + u * sin[..., None] + v * cos[..., None]
    return torch.stack([x, y], dim=-1)


def polygon_to_box(polygons: torch.Tensor) -> torch.Tensor:
    """The smallest-area rotated box ``(..., 5)`` holding each polygon ``(..., K, 2)`` (e.g. DOTA's four
    annotated corners), named canonically (see :func:`regularize_boxes`).

    The smallest enclosing rectangle has a side along an edge of the convex hull, and every hull edge joins
    two of the points: the directions of all point pairs are tried.
    """
    p = polygons.float()
    k = p.shape[-2]
    i, j = torch.triu_indices(k, k, 1, device=p.device)
    d = p[..., j, :] - p[..., i, :]  # (..., pairs, 2)
    a = torch.atan2(d[..., 1], d[..., 0])
    cos, sin = torch.cos(a)[..., None], torch.sin(a)[..., None]  # (..., pairs, 1)
    x, y = p[..., None, :, 0], p[..., None, :, 1]  # (..., 1, K)
    u, v = x * cos + y * sin, -x * sin + y * cos  # the points in each candidate frame
    w, h = u.amax(-1) - u.amin(-1), v.amax(-1) - v.amin(-1)
    best = (w * h).argmin(-1, keepdim=True)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(-1, best)[..., 0]

    uc, vc = pick((u.amax(-1) + u.amin(-1)) / 2), pick((v.amax(-1) + v.amin(-1)) / 2)
    c, s = pick(cos[..., 0]), pick(sin[..., 0])
    box = torch.stack([uc * c - vc * s, uc * s + vc * c, pick(w), pick(h), pick(a)], dim=-1)
    return regularize_boxes(box)


def encode_distances(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distances ``(..., 4)`` from ``points`` ``(..., 2)`` to the left, top, right and bottom sides of ``boxes``
    ``(..., 5)``, measured in the box's own frame (left/right along ``w``, top/bottom along ``h``).

    All four are positive exactly when the point lies inside the box. Inverse of :func:`decode_distances`.
    """
    cx, cy, w, h, a = boxes.unbind(-1)
    dx, dy = points[..., 0] - cx, points[..., 1] - cy
    cos, sin = torch.cos(a), torch.sin(a)
    ox, oy = dx * cos + dy * sin, -dx * sin + dy * cos  # the point in the box frame
    return torch.stack([w / 2 + ox, h / 2 + oy, w / 2 - ox, h / 2 - oy], dim=-1)


def decode_distances(points: torch.Tensor, distances: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Boxes ``(..., 5)`` from ``points`` ``(..., 2)``, side distances ``(l, t, r, b)`` ``(..., 4)`` in the
    rotated frame and the box ``angle`` ``(...)``."""
    left, top, right, bottom = distances.unbind(-1)
    ox, oy = (right - left) / 2, (bottom - top) / 2  # the box centre relative to the point, in the box frame
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx = points[..., 0] + ox * cos - oy * sin
    cy = points[..., 1] + ox * sin + oy * cos
    return torch.stack([cx, cy, left + right, top + bottom, angle], dim=-1)


def box_to_gaussian(boxes: torch.Tensor, variance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(..., 2)`` and covariance ``(..., 2, 2)`` of boxes: ``R diag(s w^2, s h^2) R^T`` with
    ``s = variance_scale`` (1/12: uniform over the box, ProbIoU; 1/4: KLD). Sides are clamped to 1e-3 px."""
    cx, cy, w, h, a = boxes.unbind(-1)
    vw, vh = variance_scale * w.clamp(min=1e-3) ** 2, variance_scale * h.clamp(min=1e-3) ** 2
    cos, sin = torch.cos(a), torch.sin(a)
    sxx = vw * cos**2 + vh * sin**2
    syy = vw * sin**2 + vh * cos**2
    sxy = (vw - vh) * cos * sin
    cov = torch.stack([torch.stack([sxx, sxy], -1), torch.stack([sxy, syy], -1)], -2)
    return torch.stack([cx, cy], dim=-1), cov


def _gaussian_terms(pred: torch.Tensor, target: torch.Tensor, variance_scale: float) -> tuple[torch.Tensor, ...]:
    """Variances along the sides ``(vw, vh)`` of both boxes, the centre offset in the target's frame
    ``(u, v)`` and in the prediction's frame, and ``cos^2, sin^2`` of the angle between the boxes.

    The Gaussian losses are written with these (sums of positive terms: no cancellation in float32).
    """
    p, t = pred.float(), target.float()
    vw_p, vh_p = variance_scale * p[..., 2].clamp(min=1e-3) ** 2, variance_scale * p[..., 3].clamp(min=1e-3) ** 2
    vw_t, vh_t = variance_scale * t[..., 2].clamp(min=1e-3) ** 2, variance_scale * t[..., 3].clamp(min=1e-3) ** 2
    dx, dy = p[..., 0] - t[..., 0], p[..., 1] - t[..., 1]
    cos_t, sin_t = torch.cos(t[..., 4]), torch.sin(t[..., 4])
    cos_p, sin_p = torch.cos(p[..., 4]), torch.sin(p[..., 4])
    u_t, v_t = dx * cos_t + dy * sin_t, -dx * sin_t + dy * cos_t
    u_p, v_p = dx * cos_p + dy * sin_p, -dx * sin_p + dy * cos_p
    delta = p[..., 4] - t[..., 4]
    c2, s2 = torch.cos(delta) ** 2, torch.sin(delta) ** 2
    return vw_p, vh_p, vw_t, vh_t, u_p, v_p, u_t, v_t, c2, s2


def probiou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Hellinger distance between the boxes' Gaussians (ProbIoU's loss ``L1 = 1 - ProbIoU``), per box.

    ``B_D = 1/8 dmu^T S^-1 dmu + 1/2 ln(det S / sqrt(det S1 det S2))`` with ``S = (S1 + S2) / 2``;
    loss ``sqrt(1 - exp(-B_D) + eps)``: ``sqrt(eps)`` for identical boxes, at most 1. Symmetric.
    For 2 x 2 matrices ``adj(S1 + S2) = adj(S1) + adj(S2)`` and ``det(S1 + S2) = det S1 + det S2 +
    tr(adj(S1) S2)``, which gives both terms as sums of positive parts.
    """
    vw1, vh1, vw2, vh2, u1, v1, u2, v2, c2, s2 = _gaussian_terms(pred, target, 1 / 12)
    det1, det2 = vw1 * vh1, vw2 * vh2
    det_sum = det1 + det2 + vh1 * (vw2 * c2 + vh2 * s2) + vw1 * (vw2 * s2 + vh2 * c2)  # det(S1 + S2)
    quad = vh1 * u1**2 + vw1 * v1**2 + vh2 * u2**2 + vw2 * v2**2  # dmu^T adj(S1 + S2) dmu
    bd = quad / (4 * det_sum) + 0.5 * torch.log(det_sum / (4 * (det1 * det2).sqrt()))
    bd = bd.clamp(min=0.0, max=100.0)
    return (1 - torch.exp(-bd) + eps).sqrt()


def kld_loss(pred: torch.Tensor, target: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KLD box loss ``1 - 1 / (tau + ln(1 + KL(N_pred || N_target)))`` per box (0 for identical boxes when
    ``tau`` is 1). ``KL = 1/2 (dmu^T St^-1 dmu + tr(St^-1 Sp) + ln(det St / det Sp)) - 1``. Not symmetric:
    the target's Gaussian is the reference."""
    vw_p, vh_p, vw_t, vh_t, _, _, u, v, c2, s2 = _gaussian_terms(pred, target, 1 / 4)
    mahalanobis = u**2 / vw_t + v**2 / vh_t
    trace = (vw_p * c2 + vh_p * s2) / vw_t + (vw_p * s2 + vh_p * c2) / vh_t
    kl = 0.5 * (mahalanobis + trace + torch.log(vw_t * vh_t / (vw_p * vh_p))) - 1.0
    kl = kl.clamp(min=0.0)
    return 1 - 1 / (tau + torch.log1p(kl))


def gaussian_box_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "probiou") -> torch.Tensor:
    """The Gaussian box loss named ``kind`` (``"probiou"`` or ``"kld"``), per box."""
    if kind == "probiou":
        return probiou_loss(pred, target)
    if kind == "kld":
        return kld_loss(pred, target)
    raise ValueError(f"unknown box loss {kind!r}; expected 'probiou' or 'kld'")


def box_iou_rotated(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Exact IoU of all pairs ``(N, M)`` of rotated boxes ``(N, 5)`` and ``(M, 5)`` (torchvision's kernel).

    torchvision's ``cxcywhr`` format takes degrees, counter-clockwise in a y-up frame; ours is radians,
    clockwise on screen (y down): the angle is converted as ``-degrees(angle)``. Note: in torchvision 0.29
    this kernel (float32) sometimes returns about 0.5 instead of 1 for one box under two names (``(w, h, a)``
    and ``(h, w, a + pi/2)``, coincident edges); :func:`pairwise_iou_rotated` does not, and NMS uses it.
    """
    a, b = boxes1.float().clone(), boxes2.float().clone()
    a[:, 4] = -torch.rad2deg(a[:, 4])
    b[:, 4] = -torch.rad2deg(b[:, 4])
    return box_iou(a, b, fmt="cxcywhr")


def _cross(o: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z of ``(a - o) x (b - o)`` over the last axis (2)."""
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (b[..., 0] - o[..., 0])


def _inside(points: torch.Tensor, quads: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Whether each of ``points`` ``(P, K, 2)`` lies in the convex quad ``(P, 4, 2)`` (any orientation)."""
    a, b = quads[:, None, :, :], quads.roll(-1, dims=1)[:, None, :, :]
    c = _cross(a, b, points[:, :, None, :])  # (P, K, 4)
    return (c >= -tol[:, None, None]).all(-1) | (c <= tol[:, None, None]).all(-1)


def pairwise_iou_rotated(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Exact IoU of matched pairs of rotated boxes ``(P, 5)`` and ``(P, 5)``, returning ``(P,)``.

    The intersection of two convex quadrilaterals is the convex hull of the corners of each inside the
    other and the crossings of their edges; its area is the shoelace sum over those points ordered by
    angle around their mean. Computed in float64 relative to the first box's centre.
    """
    if boxes1.shape[0] == 0:
        return boxes1.new_zeros(0)
    a, b = boxes1.double(), boxes2.double()
    origin = a[:, :2].clone()
    a = torch.cat([a[:, :2] - origin, a[:, 2:]], dim=1)
    b = torch.cat([b[:, :2] - origin, b[:, 2:]], dim=1)
    area_a, area_b = a[:, 2] * a[:, 3], b[:, 2] * b[:, 3]
    qa, qb = box_to_corners(a), box_to_corners(b)  # (P, 4, 2)
    scale = torch.maximum(a[:, 2:4].amax(-1), b[:, 2:4].amax(-1)).clamp(min=1e-12)
    tol = 1e-9 * scale**2
    in_a = _inside(qb, qa, tol)  # corners of b inside a
    in_b = _inside(qa, qb, tol)
    # edge crossings: a edge i (p -> p + r) against b edge j (q -> q + s)
    p, r = qa[:, :, None, :], (qa.roll(-1, dims=1) - qa)[:, :, None, :]
    q, s = qb[:, None, :, :], (qb.roll(-1, dims=1) - qb)[:, None, :, :]
    denom = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]  # (P, 4, 4)
    qp = q - p
    safe = torch.where(denom.abs() > 1e-12 * scale[:, None, None] ** 2, denom, torch.ones_like(denom))
    t = (qp[..., 0] * s[..., 1] - qp[..., 1] * s[..., 0]) / safe
    u = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / safe
    eps = 1e-9
    crossing = (denom.abs() > 1e-12 * scale[:, None, None] ** 2) & (t >= -eps) & (t <= 1 + eps)
    crossing &= (u >= -eps) & (u <= 1 + eps)
    cross_pts = (p + t[..., None] * r).reshape(-1, 16, 2)
    pts = torch.cat([qa, qb, cross_pts], dim=1)  # (P, 24, 2)
    valid = torch.cat([in_b, in_a, crossing.reshape(-1, 16)], dim=1)
    count = valid.sum(1)
    w = valid.to(pts.dtype)
    centre = (pts * w[..., None]).sum(1) / count.clamp(min=1)[:, None]
    ang = torch.atan2(pts[..., 1] - centre[:, None, 1], pts[..., 0] - centre[:, None, 0])
    ang = torch.where(valid, ang, torch.full_like(ang, 10.0))  # invalid points last
    order = ang.argsort(dim=1)
    pts = pts.gather(1, order[..., None].expand(-1, -1, 2))
    valid = valid.gather(1, order)
    # close the polygon over the valid points: each valid point joins the next valid one (or the first)
    idx = torch.arange(pts.shape[1], device=pts.device).expand_as(valid)
    nxt = torch.where(idx + 1 < count[:, None], idx + 1, torch.zeros_like(idx))
    pn = pts.gather(1, nxt[..., None].expand(-1, -1, 2))
    shoelace = (pts[..., 0] * pn[..., 1] - pts[..., 1] * pn[..., 0]) * valid
    inter = (shoelace.sum(1) / 2).abs() * (count >= 3)
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))
    return iou.clamp(0.0, 1.0).to(boxes1.dtype)


def nms_rotated(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy non-maximum suppression of rotated boxes ``(N, 5)``, per label when ``labels`` ``(N,)`` is given.

    Returns the indices of the kept boxes in descending score order. A box is dropped when its IoU with a
    kept box of a higher score (and the same label) exceeds ``iou_threshold``. Only the pairs whose
    axis-aligned bounding boxes meet are measured (exactly, with :func:`pairwise_iou_rotated`); the greedy pass
    runs on the host over that sparse set.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b = boxes[order].float()
    cos, sin = torch.cos(b[:, 4]).abs(), torch.sin(b[:, 4]).abs()
    ex, ey = (b[:, 2] * cos + b[:, 3] * sin) / 2, (b[:, 2] * sin + b[:, 3] * cos) / 2  # axis-aligned half extents
    close = ((b[:, None, 0] - b[None, :, 0]).abs() < ex[:, None] + ex[None, :]) & (
        (b[:, None, 1] - b[None, :, 1]).abs() < ey[:, None] + ey[None, :]
    )
    close = torch.triu(close, diagonal=1)
    if labels is not None:
        lab = labels[order]
        close &= lab[:, None] == lab[None, :]
    i, j = close.nonzero(as_tuple=True)
    chunk = 1 << 16
    ious = [pairwise_iou_rotated(b[i[k : k + chunk]], b[j[k : k + chunk]]) for k in range(0, len(i), chunk)]
    ious = torch.cat(ious) if ious else b.new_zeros(0)
    over = ious > iou_threshold
    i, j = i[over].cpu().numpy(), j[over].cpu().numpy()
    keep = np.ones(n, dtype=bool)
    if len(i):
        starts = np.searchsorted(i, np.arange(n + 1))  # pairs are sorted by i (row-major nonzero)
        for row in np.unique(i):
            if keep[row]:
                keep[j[starts[row] : starts[row + 1]]] = False
    return order[torch.from_numpy(np.flatnonzero(keep)).to(boxes.device)]
