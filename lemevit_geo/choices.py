"""Choices shared by the command line and the pipelines (defined once)."""

from enum import Enum


class Task(str, Enum):
    """What a model bundle predicts."""

    segment = "segment"
    change = "change"
    classify = "classify"
    detect = "detect"


class Arch(str, Enum):
    """LeMeViT size."""

    tiny = "tiny"
    small = "small"
    base = "base"


class Stitch(str, Enum):
    """How overlapping tiles are merged: centre crops, or smooth-window blending of logits."""

    crop = "crop"
    blend = "blend"


class Precision(str, Enum):
    """Numeric precision of inference: ``auto`` picks bf16/fp16 where the device runs it fast."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Schedule(str, Enum):
    """Learning-rate schedule of training: linear warm-up then cosine decay per step, or torchgeo's plateau drop."""

    cosine = "cosine"
    plateau = "plateau"


class PretrainMethod(str, Enum):
    """Self-supervised objective of ``pretrain``: masked image modelling, or torchgeo's contrastive trainers."""

    simmim = "simmim"
    simclr = "simclr"
    moco = "moco"


class Compile(str, Enum):
    """Whether inference runs the model through ``torch.compile``: ``auto`` compiles where it pays (CUDA)."""

    auto = "auto"
    on = "on"
    off = "off"
