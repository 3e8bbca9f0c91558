"""Deterministic weights for a LeMeViT state dict, keyed by parameter name.

Every tensor is drawn from its own generator, seeded with the CRC32 of its key,
so two implementations that use the same key names and shapes get identical
weights without any weight file being shipped.
"""

import zlib

import torch


def fill_state_dict(state_dict):
    out = {}
    for key, t in state_dict.items():
        if not t.is_floating_point():
            out[key] = t.clone()
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        shape = t.shape
        if key.endswith("running_var"):
            v = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            v = 0.1 * torch.randn(shape, generator=g)
        elif t.ndim == 1 and key.endswith("weight"):  # norm scales
            v = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif t.ndim == 1:  # biases
            v = 0.02 * torch.randn(shape, generator=g)
        elif key.endswith("meta_tokens"):
            v = torch.randn(shape, generator=g)
        else:  # weights: fan-in scaled
            fan_in = max(1, t[0].numel())
            v = 0.5 * torch.randn(shape, generator=g) / fan_in**0.5
        out[key] = v.to(t.dtype)
    return out
