"""Changing the number of frames of a trained video tower (pretrain on 4, fine-tune on 16)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def interpolate_temporal_embedding(embedding: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Resample a (T, D) temporal embedding to (num_steps, D) by linear interpolation along time.

    ``align_corners=False`` treats entry i as the centre of the i-th of T equal segments, which is where
    the sampler takes frame i of a clip, so old and new entries line up at the same instants of the clip.
    """
    if embedding.shape[0] == num_steps:
        return embedding.clone()
    x = embedding.detach().float().t().unsqueeze(0)  # (1, D, T): interpolate wants time last
    x = F.interpolate(x, size=num_steps, mode="linear", align_corners=False)
    return x.squeeze(0).t().contiguous().to(embedding.dtype)


def resize_temporal_embeddings(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` whose temporal embeddings are interpolated to ``model``'s frame count."""
    own = model.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        if key.endswith("temporal_embedding") and key in own and value.shape[0] != own[key].shape[0]:
            out[key] = interpolate_temporal_embedding(value, own[key].shape[0])
    return out


def load_state_dict_resized(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """``model.load_state_dict`` for a checkpoint trained with a different number of frames.

    Returns torch's (missing_keys, unexpected_keys).
    """
    return model.load_state_dict(resize_temporal_embeddings(state_dict, model), strict=strict)
