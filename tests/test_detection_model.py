"""Oriented detection model: rotated geometry, Gaussian box losses, FCOS assignment, rotated NMS, the detector."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from lemevit_geo.models.detection import DEFAULT_OPTIONS, OrientedFCOS, assign_targets
from lemevit_geo.models.factory import backbone_of, build_task_model, head_options
from lemevit_geo.models.lemevit import LeMeViT
from lemevit_geo.models.rotated import (
    box_iou_rotated,
    box_to_corners,
    box_to_gaussian,
    decode_distances,
    encode_distances,
    gaussian_box_loss,
    kld_loss,
    nms_rotated,
    pairwise_iou_rotated,
    polygon_to_box,
    probiou_loss,
    regularize_boxes,
)
from lemevit_geo.pipelines.metrics import box_polygons, detection_ap, rows_to_detections

TINY_HEAD = dict(fpn_channels=32, num_convs=1)


def random_boxes(n: int, seed: int = 0, extent: float = 60.0, size: float = 40.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([0.0, 0.0, 1.0, 1.0, -math.pi], dtype=torch.float64)
    span = torch.tensor([extent, extent, size, size, 2 * math.pi], dtype=torch.float64)
    return torch.rand(n, 5, generator=g, dtype=torch.float64) * span + lo


def other_name(boxes: torch.Tensor) -> torch.Tensor:
    """The same boxes named (h, w, angle + 90 degrees)."""
    out = boxes[:, [0, 1, 3, 2, 4]].clone()
    out[:, 4] += math.pi / 2
    return out


def shapely_box(box: torch.Tensor | np.ndarray) -> Polygon:
    """Reference polygon, written out from the convention (w side along (cos a, sin a), y down)."""
    cx, cy, w, h, a = (float(v) for v in box)
    ux, uy = math.cos(a) * w / 2, math.sin(a) * w / 2
    vx, vy = -math.sin(a) * h / 2, math.cos(a) * h / 2
    corners = [(-ux - vx, -uy - vy), (ux - vx, uy - vy), (ux + vx, uy + vy), (-ux + vx, -uy + vy)]
    return Polygon([(cx + x, cy + y) for x, y in corners])


def shapely_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    pa, pb = shapely_box(a), shapely_box(b)
    union = pa.union(pb).area
    return pa.intersection(pb).area / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------------------ geometry


def test_corners_follow_the_angle_convention() -> None:
    # angle +90 degrees turns the w side from the x axis onto the y axis (down): clockwise on screen
    c = box_to_corners(torch.tensor([[10.0, 20.0, 4.0, 2.0, math.pi / 2]]))[0]
    np.testing.assert_allclose(c.numpy(), [[11, 18], [11, 22], [9, 22], [9, 18]], atol=1e-5)
    boxes = random_boxes(20)
    np.testing.assert_allclose(box_polygons(boxes.numpy()), box_to_corners(boxes).numpy(), atol=1e-9)
    for b, corners in zip(boxes, box_to_corners(boxes), strict=True):
        assert Polygon(corners.tolist()).equals_exact(shapely_box(b), 1e-9)


def test_regularize_keeps_the_box_and_names_it_canonically() -> None:
    boxes = random_boxes(200, seed=1)
    reg = regularize_boxes(boxes)
    assert (reg[:, 2] >= reg[:, 3]).all()
    assert (reg[:, 4] >= -math.pi / 2).all() and (reg[:, 4] < math.pi / 2).all()
    assert torch.allclose(pairwise_iou_rotated(boxes, reg), torch.ones(200, dtype=torch.float64))


def test_polygon_to_box_finds_the_smallest_rectangle() -> None:
    boxes = random_boxes(100, seed=17).float()
    corners = box_to_corners(boxes)
    shuffled = corners[:, torch.randperm(4, generator=torch.Generator().manual_seed(0))]
    for polys in (corners, shuffled, corners.flip(1)):
        back = polygon_to_box(polys)
        assert torch.allclose(pairwise_iou_rotated(back, boxes), torch.ones(100), atol=1e-4)
    # any quadrilateral: the box holds it, and no other direction gives a smaller box
    g = torch.Generator().manual_seed(18)
    quads = torch.rand(50, 4, 2, generator=g) * 50
    fitted = polygon_to_box(quads)
    for q, b in zip(quads, fitted, strict=True):
        rect = shapely_box(b)
        assert rect.buffer(1e-3).contains(Polygon(q.tolist()).convex_hull)
        assert rect.area <= Polygon(q.tolist()).convex_hull.minimum_rotated_rectangle.area + 1e-3


def test_encode_decode_round_trip() -> None:
    boxes = random_boxes(100, seed=2)
    g = torch.Generator().manual_seed(3)
    # points inside each box: random offsets in the box frame
    frac = torch.rand(100, 2, generator=g, dtype=torch.float64) - 0.5
    ox, oy = frac[:, 0] * boxes[:, 2], frac[:, 1] * boxes[:, 3]
    cos, sin = torch.cos(boxes[:, 4]), torch.sin(boxes[:, 4])
    points = torch.stack([boxes[:, 0] + ox * cos - oy * sin, boxes[:, 1] + ox * sin + oy * cos], -1)
    d = encode_distances(points, boxes)
    assert (d > 0).all()
    torch.testing.assert_close(decode_distances(points, d, boxes[:, 4]), boxes)
    # a point outside the box has a negative distance
    assert (encode_distances(boxes[:, :2] + boxes[:, 2:4].amax(1, keepdim=True), boxes) < 0).any(1).all()


# ------------------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("kind", ["probiou", "kld"])
def test_box_loss_is_minimal_for_identical_boxes_and_angle_invariant(kind: str) -> None:
    boxes = random_boxes(50, seed=4).float()
    same = gaussian_box_loss(boxes, boxes, kind)
    assert same.max() < 1e-3  # probiou: sqrt(eps) = 3e-4 by its formula; kld: 0
    # other names of the same boxes: (h, w, a + 90 deg), a + 180 deg
    turned = boxes.clone()
    turned[:, 4] += math.pi
    assert gaussian_box_loss(other_name(boxes), boxes, kind).max() < 1e-3
    assert gaussian_box_loss(turned, boxes, kind).max() < 1e-3
    # no jump at the angle boundary: predictions swept across +-90 degrees, their angles wrapped to [-90, 90)
    target = torch.tensor([[50.0, 50.0, 40.0, 10.0, math.radians(89.9)]])
    offsets = torch.linspace(-1.0, 1.0, 21)
    pred = target.repeat(21, 1)
    pred[:, 4] = torch.remainder(pred[:, 4] + torch.deg2rad(offsets) + math.pi / 2, math.pi) - math.pi / 2
    assert (pred[:, 4] < 0).any() and (pred[:, 4] > 0).any()  # the sweep crosses the boundary
    unwrapped = target.repeat(21, 1)
    unwrapped[:, 4] += torch.deg2rad(offsets)
    losses = gaussian_box_loss(pred, target.expand(21, 5), kind)
    torch.testing.assert_close(losses, gaussian_box_loss(unwrapped, target.expand(21, 5), kind), atol=2e-4, rtol=0)
    torch.testing.assert_close(losses, losses.flip(0), atol=2e-4, rtol=0)  # symmetric around the target angle
    assert losses.argmin() == 10 and (losses.diff().abs() < 0.05).all()


def test_gaussian_losses_equal_their_matrix_definitions() -> None:
    """The closed forms in the losses against the textbook formulas on covariance matrices (float64)."""
    a, b = random_boxes(40, seed=15), random_boxes(40, seed=16)
    b[:, :2] = a[:, :2] + torch.randn(40, 2, dtype=torch.float64) * 5
    mu1, s1 = box_to_gaussian(a, 1 / 12)
    mu2, s2 = box_to_gaussian(b, 1 / 12)
    s = (s1 + s2) / 2
    d = (mu1 - mu2)[..., None]
    bd = (d.transpose(1, 2) @ torch.linalg.inv(s) @ d)[:, 0, 0] / 8
    bd = bd + 0.5 * torch.log(torch.linalg.det(s) / (torch.linalg.det(s1) * torch.linalg.det(s2)).sqrt())
    hellinger = (1 - torch.exp(-bd) + 1e-7).sqrt()
    torch.testing.assert_close(probiou_loss(a, b).double(), hellinger, atol=1e-5, rtol=0)
    mp, sp = box_to_gaussian(a, 1 / 4)
    mt, st = box_to_gaussian(b, 1 / 4)
    inv = torch.linalg.inv(st)
    d = (mp - mt)[..., None]
    kl = 0.5 * ((d.transpose(1, 2) @ inv @ d)[:, 0, 0] + torch.einsum("nii->n", inv @ sp))
    kl = kl + 0.5 * torch.log(torch.linalg.det(st) / torch.linalg.det(sp)) - 1
    torch.testing.assert_close(kld_loss(a, b).double(), 1 - 1 / (1 + torch.log1p(kl)), atol=1e-5, rtol=0)


def test_probiou_is_symmetric_kld_is_not() -> None:
    a, b = random_boxes(30, seed=5).float(), random_boxes(30, seed=6).float()
    b[:, :2] = a[:, :2] + 3  # overlapping pairs
    torch.testing.assert_close(probiou_loss(a, b), probiou_loss(b, a))
    assert not torch.allclose(kld_loss(a, b), kld_loss(b, a))
    assert ((probiou_loss(a, b) >= 0) & (probiou_loss(a, b) <= 1)).all()


@pytest.mark.parametrize("kind", ["probiou", "kld"])
def test_box_loss_gradients_are_finite(kind: str) -> None:
    target = random_boxes(40, seed=7).float()
    pred = target.clone()
    pred[:20] += torch.randn(20, 5) * torch.tensor([2.0, 2.0, 2.0, 2.0, 0.3])  # near and identical ones
    pred[25:30, 2:4] = pred[25:30, 2:4].mean(1, keepdim=True)  # squares: the angle is free
    pred.requires_grad_(True)
    gaussian_box_loss(pred, target, kind).sum().backward()
    assert torch.isfinite(pred.grad).all()
    # far apart boxes still get a finite loss and gradient
    far = target.clone()
    far[:, :2] += 1e4
    far.requires_grad_(True)
    loss = gaussian_box_loss(far, target, kind)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(far.grad).all()


# ----------------------------------------------------------------------------------------------- rotated IoU


def test_rotated_iou_matches_shapely_including_other_names() -> None:
    a = random_boxes(600, seed=8)
    b = a.clone()
    g = torch.Generator().manual_seed(9)
    b[:, :2] += torch.randn(600, 2, generator=g, dtype=torch.float64) * 10
    b[:, 2:4] *= torch.rand(600, 2, generator=g, dtype=torch.float64) + 0.5
    b[:, 4] += torch.randn(600, generator=g, dtype=torch.float64)
    b[:100] = a[:100]
    b[100:250] = other_name(a[100:250])  # the same box, another name
    reference = torch.tensor([shapely_iou(x, y) for x, y in zip(a, b, strict=True)], dtype=torch.float64)
    torch.testing.assert_close(pairwise_iou_rotated(a, b), reference, atol=1e-9, rtol=0)
    assert torch.allclose(pairwise_iou_rotated(a[:250], b[:250]), torch.ones(250, dtype=torch.float64))
    # torchvision's kernel (all pairs) in our convention, off the coincident-edge cases where it is unstable
    full = box_iou_rotated(a[250:300], b[250:300]).double()
    torch.testing.assert_close(full.diagonal(), reference[250:300], atol=2e-3, rtol=0)


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> list[int]:
    """Greedy rotated NMS in pure Python with shapely."""
    polys = [shapely_box(b) for b in boxes]
    keep: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda k: -float(scores[k])):
        overlaps = (
            labels[i] == labels[k] and polys[i].intersection(polys[k]).area / polys[i].union(polys[k]).area > threshold
            for k in keep
        )
        if not any(overlaps):
            keep.append(i)
    return keep


@pytest.mark.parametrize("threshold", [0.1, 0.5])
def test_nms_matches_a_slow_reference(threshold: float) -> None:
    boxes = random_boxes(300, seed=10, extent=200.0, size=40.0).float()
    boxes[:, 2:4] += 2
    boxes[200:260] = other_name(boxes[140:200])  # exact duplicates under another name
    boxes[260:300] = boxes[100:140] + torch.tensor([1.0, -1.0, 2.0, 1.0, 0.1])  # near duplicates
    scores = torch.rand(300, generator=torch.Generator().manual_seed(11))
    labels = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(12))
    labels[200:260] = labels[140:200]
    expected = reference_nms(boxes, scores, labels, threshold)
    assert nms_rotated(boxes, scores, threshold, labels).tolist() == expected
    assert not any(k in expected and k + 60 in expected for k in range(140, 200))  # one of each duplicate pair
    without = nms_rotated(boxes, scores, threshold)
    assert without.tolist() == reference_nms(boxes, scores, torch.zeros(300), threshold)


def test_nms_is_fast_for_a_tile_of_candidates() -> None:
    boxes = random_boxes(1000, seed=13, extent=512.0, size=40.0).float()
    boxes[:, 2:4] += 4
    scores, labels = torch.rand(1000), torch.randint(0, 5, (1000,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on an oversubscribed 2-core machine are many times slower
    try:
        nms_rotated(boxes, scores, 0.1, labels)
        start = time.perf_counter()
        nms_rotated(boxes, scores, 0.1, labels)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert seconds < 1.0  # ~0.025 s on one core (torchvision's all-pairs IoU alone: ~0.2 s); generous for CI


def test_nms_edge_cases() -> None:
    assert nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5).numel() == 0
    one = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.3]])
    assert nms_rotated(one, torch.ones(1), 0.5).tolist() == [0]
    far = torch.tensor([[5.0, 5.0, 4.0, 2.0, 0.3], [50.0, 5.0, 4.0, 2.0, 0.3]])
    assert nms_rotated(far, torch.tensor([0.2, 0.9]), 0.1).tolist() == [1, 0]


# ------------------------------------------------------------------------------------------------ assignment


def level_layout(model: OrientedFCOS, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shapes = [math.ceil(size / s) for s in model.strides]
    fake = {"cls": [torch.zeros(1, 1, n, n) for n in shapes]}
    return model.locations(fake)


@pytest.fixture(scope="module")
def tiny_detector() -> OrientedFCOS:
    torch.manual_seed(0)
    return OrientedFCOS("tiny", in_chans=3, num_classes=3, drop_path_rate=0.0, angle_free_classes=[1], **TINY_HEAD)


def test_locations_and_ranges(tiny_detector: OrientedFCOS) -> None:
    points, strides, ranges = level_layout(tiny_detector, 128)
    assert tiny_detector.strides == (8, 16, 32, 64, 128)
    assert tiny_detector.regress_ranges == [64.0, 128.0, 256.0, 512.0]
    assert len(points) == 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1
    torch.testing.assert_close(points[0], torch.tensor([4.0, 4.0]))  # cell centre of the first stride-8 cell
    torch.testing.assert_close(points[1], torch.tensor([12.0, 4.0]))  # row-major
    assert strides[-1] == 128 and ranges[0, 0] == -math.inf and ranges[-1, 1] == math.inf


def test_assignment_levels_centre_sampling_and_smallest_box(tiny_detector: OrientedFCOS) -> None:
    points, strides, ranges = level_layout(tiny_detector, 256)
    small = [100.0, 100.0, 40.0, 16.0, 0.5]  # max(l, t, r, b) < 64: stride 8
    large = [128.0, 128.0, 200.0, 150.0, -0.3]  # around 100: stride 16
    t = assign_targets(points, strides, ranges, torch.tensor([small, large]), torch.tensor([0, 2]))
    pos_small = t.positive & (t.labels == 0)
    pos_large = t.positive & (t.labels == 2)
    assert set(strides[pos_small].tolist()) == {8.0}
    assert set(strides[pos_large].tolist()) == {16.0, 32.0}  # off-centre locations reach farther
    reach = encode_distances(points[pos_large], torch.tensor(large).expand(int(pos_large.sum()), 5)).amax(1)
    on_32 = strides[pos_large] == 32
    assert (reach[on_32] > 128).all() and (reach[~on_32] <= 128).all() and (reach[~on_32] > 64).all()
    # centre sampling: positives within 1.5 strides of the centre along both box axes, and inside the box
    d = encode_distances(points[pos_small], torch.tensor(small).expand(int(pos_small.sum()), 5))
    assert (d > 0).all()
    ox, oy = (d[:, 0] - d[:, 2]) / 2, (d[:, 1] - d[:, 3]) / 2
    assert (ox.abs() < 12).all() and (oy.abs() < 12).all()
    assert 3 <= int(pos_small.sum()) <= 9
    no_sampling = assign_targets(points, strides, ranges, torch.tensor([small]), torch.tensor([0]), None, 0.0)
    assert no_sampling.positive.sum() > pos_small.sum()
    # the centerness target is 1 at the centre and falls off
    assert ((t.centerness[t.positive] > 0) & (t.centerness[t.positive] <= 1)).all()
    # the smaller box wins where both apply (both boxes belong to stride 8 at their common centre)
    outer, inner = [128.0, 128.0, 90.0, 70.0, 0.0], [128.0, 128.0, 50.0, 30.0, 0.2]
    both = assign_targets(points, strides, ranges, torch.tensor([outer, inner]), torch.tensor([2, 1]), None, 0.0)
    at_centre = (torch.cdist(points, torch.tensor([[128.0, 128.0]]))[:, 0] < 8) & (strides == 8)
    assert at_centre.sum() == 4 and (both.labels[at_centre] == 1).all()
    assert ((both.labels == 2) & both.positive).any()  # the outer box keeps the locations outside the inner one
    torch.testing.assert_close(both.boxes[at_centre][0], torch.tensor(inner))


def test_every_box_gets_a_location_even_a_tiny_rotated_one(tiny_detector: OrientedFCOS) -> None:
    points, strides, ranges = level_layout(tiny_detector, 128)
    g = torch.Generator().manual_seed(14)
    for _ in range(50):
        centre, sides = torch.rand(2, generator=g) * 100 + 10, torch.rand(2, generator=g) * 5 + 1
        box = torch.cat([centre, sides, torch.rand(1, generator=g) * 3])[None]
        t = assign_targets(points, strides, ranges, box, torch.tensor([0]))
        assert t.positive.sum() >= 1 and (t.centerness[t.positive] > 0).all()


def test_ignored_boxes_take_no_loss(tiny_detector: OrientedFCOS) -> None:
    points, strides, ranges = level_layout(tiny_detector, 128)
    boxes = torch.tensor([[40.0, 40.0, 30.0, 14.0, 0.3], [90.0, 90.0, 30.0, 30.0, 0.0]])
    t = assign_targets(points, strides, ranges, boxes, torch.tensor([0, 2]), torch.tensor([False, True]))
    assert t.ignored.any() and not (t.ignored & t.positive).any()
    assert (t.labels[t.positive] == 0).all()
    # the loss: changing the logits at ignored locations changes nothing
    model = tiny_detector.train()
    x = torch.randn(1, 3, 128, 128)
    out = model(x)
    target = [{"boxes": boxes, "labels": torch.tensor([0, 2]), "ignore": torch.tensor([False, True])}]
    base = model.loss(out, target)
    ignored_first_level = t.ignored[: 16 * 16].reshape(16, 16)
    out["cls"][0] = out["cls"][0] + 5.0 * ignored_first_level
    moved = model.loss(out, target)
    torch.testing.assert_close(moved["loss"], base["loss"])


def test_angle_free_targets_are_axis_aligned(tiny_detector: OrientedFCOS) -> None:
    points, strides, ranges = level_layout(tiny_detector, 128)
    boxes = torch.tensor([[60.0, 60.0, 24.0, 22.0, 0.7]])
    t = assign_targets(points, strides, ranges, boxes, torch.tensor([1]), angle_free=torch.tensor([1]))
    assert t.positive.any() and (t.boxes[t.positive, 4] == 0).all()


# --------------------------------------------------------------------------------------------------- detector


def test_factory_builds_the_detector_and_finds_its_backbone() -> None:
    options = head_options("detect")
    assert options == DEFAULT_OPTIONS and options is not DEFAULT_OPTIONS
    assert {"fpn_channels", "use_p2", "angle_free_classes", "score_threshold", "box_loss"} <= options.keys()
    model = build_task_model("detect", "tiny", 5, 4, **{**options, **TINY_HEAD, "use_p2": True})
    assert isinstance(model, OrientedFCOS) and isinstance(model.encoder, torch.nn.Module)
    assert isinstance(backbone_of(model), LeMeViT) and backbone_of(model).in_chans == 5
    assert model.strides == (4, 8, 16, 32, 64, 128) and model.regress_ranges == [32.0, 64.0, 128.0, 256.0, 512.0]
    # channels come from the backbone's feature_info
    convs = [next(m for m in b.modules() if isinstance(m, torch.nn.Conv2d)) for b in model.fpn.inner_blocks]
    assert [c.in_channels for c in convs] == model.encoder.feature_info.channels() == [64, 128, 192, 320]
    with pytest.raises(ValueError, match="regress_ranges"):
        build_task_model("detect", "tiny", 3, 2, regress_ranges=[64, 128], **TINY_HEAD)
    with pytest.raises(ValueError, match="angle_free_classes"):
        build_task_model("detect", "tiny", 3, 2, angle_free_classes=[2], **TINY_HEAD)


@pytest.mark.parametrize("bands", [1, 4])
def test_forward_backward_reaches_every_parameter(bands: int) -> None:
    torch.manual_seed(1)
    model = OrientedFCOS("tiny", in_chans=bands, num_classes=3, drop_path_rate=0.1, **TINY_HEAD).train()
    x = torch.randn(2, bands, 128, 128)
    out = model(x)
    assert [o.shape[-1] for o in out["cls"]] == [16, 8, 4, 2, 1]
    assert all((d > 0).all() for d in out["distances"])
    first = torch.tensor([[40.0, 50.0, 36.0, 12.0, 0.4], [90.0, 90.0, 10.0, 8.0, -1.2]])
    second = torch.tensor([[64.0, 64.0, 110.0, 90.0, 1.0]])
    targets = [{"boxes": first, "labels": torch.tensor([0, 2])}, {"boxes": second, "labels": torch.tensor([1])}]
    losses = model.loss(out, targets)
    assert set(losses) == {"loss_cls", "loss_centerness", "loss_box", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # images without objects
    empty = model.loss(model(x), [{"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}] * 2)
    assert torch.isfinite(empty["loss"]) and empty["loss_box"] == 0


def test_eval_output_shape_padding_and_order(tiny_detector: OrientedFCOS) -> None:
    model = tiny_detector.eval()
    model.score_threshold, model.max_detections = 0.0, 50
    with torch.no_grad():
        y = model(torch.randn(2, 3, 128, 96))
    assert y.shape == (2, 50, 7) and y.dtype == torch.float32
    for rows in y:
        real = rows[:, 6] >= 0
        assert real.all()  # with no threshold every slot is filled
        assert (rows[:-1, 5] >= rows[1:, 5]).all()
        assert (rows[:, 2] >= rows[:, 3])[rows[:, 6] != 1].all()  # canonical names: w >= h
        a = rows[:, 4]
        assert ((a >= -math.pi / 2) & (a < math.pi / 2)).all() and (a[rows[:, 6] == 1] == 0).all()
    model.score_threshold = 0.99
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64))
    assert (y[..., 6] == -1).all() and (y[..., 5] == 0).all() and (y[..., :5] == 0).all()
    model.score_threshold, model.max_detections = 0.05, 1000


def test_postprocess_decodes_known_outputs(tiny_detector: OrientedFCOS) -> None:
    """Hand-made raw outputs: one strong location per box; NMS drops the weaker duplicate."""
    model = tiny_detector.eval()
    model.score_threshold, model.iou_threshold, model.max_detections = 0.05, 0.1, 10
    sizes = [16, 8, 4, 2, 1]
    raw = {
        "cls": [torch.full((1, 3, n, n), -10.0) for n in sizes],
        "centerness": [torch.full((1, 1, n, n), 10.0) for n in sizes],
        "distances": [torch.full((1, 4, n, n), 8.0) for n in sizes],
        "angle": [torch.zeros(1, 1, n, n) for n in sizes],
    }
    raw["cls"][0][0, 0, 5, 3] = 4.0  # class 0 at point (28, 44)
    raw["distances"][0][0, :, 5, 3] = torch.tensor([10.0, 5.0, 30.0, 5.0])  # w 40, h 10, centre +10 along w
    raw["angle"][0][0, 0, 5, 3] = math.pi / 2  # w along +y: centre at (28, 54)
    raw["cls"][0][0, 0, 6, 3] = 3.0  # a weaker duplicate one cell below, same box
    raw["distances"][0][0, :, 6, 3] = torch.tensor([18.0, 5.0, 22.0, 5.0])
    raw["angle"][0][0, 0, 6, 3] = math.pi / 2
    raw["cls"][0][0, 1, 10, 10] = 2.0  # angle-free class 1: its angle is reported as 0
    raw["angle"][0][0, 0, 10, 10] = 0.8
    out = model.postprocess(raw)[0]
    assert (out[:, 6] >= 0).sum() == 2
    expected = regularize_boxes(torch.tensor([28.0, 54.0, 40.0, 10.0, math.pi / 2]))
    torch.testing.assert_close(out[0, :5], expected, atol=1e-4, rtol=0)
    assert out[0, 6] == 0 and out[0, 5] == pytest.approx(math.sqrt(torch.sigmoid(torch.tensor(4.0)) * 0.99995), 1e-4)
    torch.testing.assert_close(out[1, :5], torch.tensor([84.0, 84.0, 16.0, 16.0, 0.0]))
    assert out[1, 6] == 1
    model.max_detections = 1000


# ------------------------------------------------------------------------------------------------- learning

SHAPES = {0: (44.0, 12.0, 1.6), 1: (22.0, 22.0, -1.6), 2: (28.0, 18.0, 0.9)}  # w, h, brightness; 1 is a disc


def synthetic_scene(rng: np.random.Generator, size: int = 128, bands: int = 3) -> tuple[np.ndarray, dict]:
    """Noise with 1-4 non-overlapping objects: long bright bars, dark discs (angle-free), medium rectangles."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    img = rng.normal(0.0, 0.35, size=(bands, size, size)).astype(np.float32)
    boxes: list[tuple[float, ...]] = []
    labels: list[int] = []
    for _ in range(rng.integers(1, 5)):
        c = int(rng.integers(0, 3))
        w, h, value = SHAPES[c]
        scale = rng.uniform(0.8, 1.2)
        w, h = w * scale, h * scale
        a = 0.0 if c == 1 else rng.uniform(-math.pi / 2, math.pi / 2)
        r = 0.5 * math.hypot(w, h)
        cx, cy = rng.uniform(0.6 * r, size - 0.6 * r, 2)
        if any(math.hypot(cx - b[0], cy - b[1]) < r + 0.5 * math.hypot(b[2], b[3]) + 2 for b in boxes):
            continue
        if c == 1:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < (w / 2) ** 2
        else:
            ox = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
            oy = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
            mask = (np.abs(ox) < w / 2) & (np.abs(oy) < h / 2)
        img[:, mask] += value
        boxes.append((cx, cy, w, h, a))
        labels.append(c)
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5), "labels": torch.tensor(labels)}
    return img, target


def synthetic_batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list[dict]]:
    items = [synthetic_scene(rng) for _ in range(n)]
    return torch.from_numpy(np.stack([i for i, _ in items])), [t for _, t in items]


@pytest.mark.slow
def test_tiny_detector_learns_rotated_rectangles() -> None:
    """A tiny detector trained from scratch for a few hundred CPU steps finds the synthetic objects."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster than two
    try:
        result, seconds = train_and_evaluate(steps=300)
    finally:
        torch.set_num_threads(threads)
    print(
        f"mAP@0.5 {result['mAP']:.3f} (VOC07 {result['mAP_07']:.3f}) AP {result['AP']} after 300 steps, {seconds:.0f} s"
    )
    assert result["mAP"] > 0.5


def train_and_evaluate(steps: int) -> tuple[dict, float]:
    """Train a tiny detector from scratch (batches of 8 synthetic 128 px scenes), evaluate on 32 new scenes."""
    torch.manual_seed(0)
    head = dict(fpn_channels=64, num_convs=2, angle_free_classes=[1])
    model = OrientedFCOS("tiny", in_chans=3, num_classes=3, drop_path_rate=0.0, **head)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        x, targets = synthetic_batch(rng, 8)
        loss = model.loss(model(x), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
    model.eval()
    x, targets = synthetic_batch(np.random.default_rng(123), 32)
    with torch.no_grad():
        rows = model(x).numpy()
    detections = [d for i, r in enumerate(rows) for d in rows_to_detections(r, i)]
    truths = [
        {"image": i, "class": int(c), "box": b.numpy()}
        for i, t in enumerate(targets)
        for b, c in zip(t["boxes"], t["labels"], strict=True)
    ]
    result = detection_ap(detections, truths, [0, 1, 2])
    result["mAP_07"] = detection_ap(detections, truths, [0, 1, 2], use_07=True)["mAP"]
    return result, time.perf_counter() - start
