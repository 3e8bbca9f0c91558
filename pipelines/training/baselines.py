"""A per-pixel classifier on the training run's own split: what the deep model has to beat to earn its cost.

``train --baseline`` fits scikit-learn's histogram gradient boosting (an optional extra:
``pip install lemevit-geo[baseline]``) on the labelled pixels of random training tiles, each pixel described
by its band values and their mean and standard deviation in 5 x 5 and 15 x 15 windows, and scores it on the
validation grid with the metrics the model is scored with. On the real scenes of ``benchmarks/realdata.py``
these context features made the stronger of the two forests measured.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from lemevit_geo.errors import InputError
from lemevit_geo.pipelines.training.compat import random_sampler
from lemevit_geo.pipelines.training.tasks import dense_metrics
from lemevit_geo.pipelines.training.train_data import TrainData

#: Windows (pixels) whose per-band mean and standard deviation describe a pixel next to its own values.
WINDOWS = (5, 15)


def pixel_features(image: np.ndarray) -> np.ndarray:
    """``(H * W, 5 * bands)`` features of an image ``(bands, H, W)``: values, and local means and deviations."""
    from scipy.ndimage import uniform_filter

    x = image.astype(np.float32)
    feats = [x]
    for size in WINDOWS:
        mean = uniform_filter(x, size=(1, size, size), mode="reflect")
        sq = uniform_filter(x * x, size=(1, size, size), mode="reflect")
        feats += [mean, np.sqrt(np.maximum(sq - mean * mean, 0))]
    stack = np.concatenate(feats)
    return stack.reshape(stack.shape[0], -1).T


def _tile(data: TrainData, query: Any) -> tuple[np.ndarray, np.ndarray]:
    """Features and class ids (``IGNORE`` where unlabelled) of one tile of the datamodule's dataset."""
    dm = data.datamodule
    sample = dm.dataset[query]
    labels = dm.labels(sample["mask"][None])[0].numpy().ravel()
    return pixel_features(sample["image"].numpy()), labels


def _classifier(seed: int) -> Any:
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError as exc:
        raise InputError(
            "`baseline` needs scikit-learn: pip install 'lemevit-geo[baseline]' (or scikit-learn)"
        ) from exc
    return HistGradientBoostingClassifier(max_iter=200, early_stopping=True, random_state=seed)


def pixel_baseline(data: TrainData, tiles: int = 64, max_pixels: int = 300_000, seed: int = 0) -> dict[str, Any]:
    """Fit a per-pixel gradient-boosting classifier on ``tiles`` random training tiles (at most ``max_pixels``
    labelled pixels) and score it on the validation grid; returns its OA, mIoU, pixels and seconds."""
    if data.task.value not in ("segment", "change"):
        raise InputError(
            f"`baseline` compares per-pixel classifiers: it applies to segment and change, not {data.task.value}"
        )
    start = time.perf_counter()
    dm = data.datamodule
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    torch.manual_seed(seed)
    for query in random_sampler(dm.dataset, dm.tile_size, tiles, dm.train_roi):
        x, y = _tile(data, query)
        keep = y < len(data.classes)
        xs.append(x[keep])
        ys.append(y[keep])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(y) > max_pixels:
        pick = rng.choice(len(y), max_pixels, replace=False)
        x, y = x[pick], y[pick]
    if len(np.unique(y)) < 2:
        raise InputError("`baseline`: the training tiles hold fewer than two classes")
    model = _classifier(seed).fit(x, y)
    metrics = dense_metrics(len(data.classes), data.ignore_index)
    for query in dm.val_sampler():
        x, labels = _tile(data, query)
        keep = labels < len(data.classes)  # the rest is ignored by the metrics
        pred = np.zeros_like(labels)
        if keep.any():
            pred[keep] = model.predict(x[keep])
        metrics.update(torch.as_tensor(pred).long(), torch.as_tensor(labels).long())
    scores = {k: round(float(v), 4) for k, v in metrics.compute().items() if k in ("OA", "mIoU")}
    return {
        "method": "per-pixel gradient boosting (values, 5x5 and 15x15 mean and std)",
        **scores,
        "train_pixels": int(len(y)),
        "seconds": round(time.perf_counter() - start, 1),
    }
