"""Torch modules of lemevit-geo: the LeMeViT backbone (registered with timm) and the task heads."""

from lemevit_geo.models.lemevit import LEMEVIT_CONFIGS, LeMeViT, attention_backend, checkpoint_filter_fn

__all__ = ["LEMEVIT_CONFIGS", "LeMeViT", "attention_backend", "checkpoint_filter_fn"]
