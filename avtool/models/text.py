"""CLIP's text tower: a causal transformer pooled at the end-of-text token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avtool.models.attention import AttnImpl, check_attn_impl
from avtool.models.blocks import Activation, Block, Transformer, init_transformer_
from avtool.models.fused_mlp import check_fused_mlp


@dataclass(frozen=True)
class TextTowerConfig:
    """Shape and training options of the text tower (defaults: CLIP ViT-B's text transformer)."""

    context_length: int = 77
    """Maximum number of BPE tokens, start and end tokens included."""
    vocab_size: int = 49408
    """Size of the BPE vocabulary."""
    width: int = 512
    """Token dimension."""
    layers: int = 12
    """Number of transformer blocks."""
    heads: int = 8
    """Attention heads per block."""
    mlp_ratio: float = 4.0
    """MLP hidden size as a multiple of the width."""
    output_dim: int | None = 256
    """Size of the final linear projection of the pooled token; None returns width-sized features."""
    act: Activation = "gelu"
    """MLP activation; OpenAI's CLIP weights need `quick_gelu`."""
    attn_impl: AttnImpl = "sdpa"
    """Attention kernel, as for the video tower (the causal mask is passed to the kernel)."""
    grad_checkpointing: bool = False
    """Recompute block activations in backward instead of storing them."""
    low_precision_residual: bool = False
    """Under autocast, carry the residual stream between blocks in the autocast dtype (bf16) instead of
    float32, as pure-bf16 training does: halves the block inputs that checkpointing keeps and the residual's
    memory traffic, at the cost of rounding the residual sums. Meant for bfloat16 (float16 may overflow)."""
    fused_mlp: bool = False
    """The MLP's activation in its matmuls' epilogues, as for the video tower."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid TextTowerConfig:\n  " + "\n  ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if self.width % self.heads:
            out.append(f"width={self.width} is not divisible by heads={self.heads}")
        if self.act not in ("gelu", "quick_gelu"):
            out.append(f"act={self.act!r} is not 'gelu' or 'quick_gelu'")
        attn_problem = check_attn_impl(self.attn_impl)
        if attn_problem:
            out.append(attn_problem)
        if self.fused_mlp and (mlp_problem := check_fused_mlp()):
            out.append(mlp_problem)
        return out

    @classmethod
    def tiny(cls, **overrides: object) -> TextTowerConfig:
        """A text tower small enough for CPU tests: 16 tokens, vocabulary of 1000, 2 blocks of width 64."""
        cfg = dict(context_length=16, vocab_size=1000, width=64, layers=2, heads=4, output_dim=32)
        return cls(**{**cfg, **overrides})


class TextTransformer(nn.Module):
    """Token ids (B, L ≤ context_length) -> the projected feature of each sequence's EOT token.

    The EOT token is found as the position of the largest token id, as CLIP and open_clip do: the CLIP
    tokenizer gives end-of-text the highest id of its vocabulary.
    """

    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(
            [
                Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.attn_impl, causal=True, fused_mlp=cfg.fused_mlp)
                for _ in range(cfg.layers)
            ],
            cfg.low_precision_residual,
        )
        self.ln_final = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.output_dim, bias=False) if cfg.output_dim else None

        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        init_transformer_(self.transformer)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=cfg.width**-0.5)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim or self.cfg.width

    def set_grad_checkpointing(self, enable: bool = True, blocks: int | None = None) -> None:
        self.transformer.set_grad_checkpointing(enable, blocks)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        L = text.shape[1]
        if L > self.cfg.context_length:
            raise ValueError(f"text has {L} tokens, the model takes at most {self.cfg.context_length}")
        x = self.token_embedding(text) + self.positional_embedding[:L]
        x = self.transformer(x)
        # LayerNorm acts per token, so pooling first gives CLIP's result without normalising 77 tokens.
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)])
        return self.proj(x) if self.proj is not None else x
