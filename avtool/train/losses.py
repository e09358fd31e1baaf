"""Contrastive pretraining and retrieval fine-tuning losses, over the global batch when distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the autograd graph to every rank's copy
    (so each rank's gradient includes its features' role as negatives on the other ranks)."""
    _, world = _world()
    if world == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def clip_loss(
    video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, local_loss: bool = False
) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised video and text embeddings of matching rows.

    With several ranks the negatives are the global batch. ``local_loss`` scores only this rank's
    rows against all columns (same gradient in expectation, B×(world·B) logits instead of world·B
    squared), as open_clip's option of that name.
    """
    rank, world = _world()
    all_video, all_text = gather_with_grad(video), gather_with_grad(text)
    if local_loss:
        labels = torch.arange(video.shape[0], device=video.device) + rank * video.shape[0]
        logits_v = logit_scale * video @ all_text.t()
        logits_t = logit_scale * text @ all_video.t()
    else:
        labels = torch.arange(all_video.shape[0], device=video.device)
        logits_v = logit_scale * all_video @ all_text.t()
        logits_t = logits_v.t()
    return (F.cross_entropy(logits_v, labels) + F.cross_entropy(logits_t, labels)) / 2


def max_margin_loss(
    video: torch.Tensor, text: torch.Tensor, margin: float = 0.2, positives: torch.Tensor | None = None
) -> torch.Tensor:
    """Bidirectional max-margin ranking loss (Wray et al. 2019) used for EK-100 MIR fine-tuning.

    For every clip i and every other sentence j (and symmetrically every sentence and other clip),
    penalise ``relu(margin - s_ii + s_ij)`` with s the cosine similarity. ``positives`` (B×B, True
    where clip i and sentence j are relevant to each other) removes such pairs from the negatives:
    several EK-100 clips share a narration.
    """
    sim = video @ text.t()
    n = sim.shape[0]
    diagonal = sim.diag()
    keep = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    if positives is not None:
        keep &= ~positives.to(torch.bool)
    v2t = F.relu(margin - diagonal[:, None] + sim)[keep]
    t2v = F.relu(margin - diagonal[None, :] + sim)[keep]
    if v2t.numel() == 0:
        return sim.sum() * 0
    return torch.cat([v2t, t2v]).mean()
