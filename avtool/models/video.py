"""Video towers: a joint space–time ViT (the paper's model) and TimeSformer (the Fig. 4 baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from avtool.model_options import fast_conv1_option, fused_mlp_option, low_precision_residual_option
from avtool.models.attention import AttnImpl, check_attn_impl, check_keeps_attention
from avtool.models.blocks import Activation, Block, DividedSpaceTimeBlock, Transformer, init_transformer_
from avtool.models.fused_mlp import check_fused_mlp
from avtool.models.patch_embed import PatchEmbed
from avtool.options import option

VideoArch = Literal["vit", "timesformer"]


@dataclass(frozen=True)
class VideoTowerConfig:
    """Shape and training options of a video tower."""

    arch: VideoArch = option("vit", panel="Model", help="Video architecture: vit (joint space-time attention over "
                             "all tokens) or timesformer (divided space-time attention).")  # fmt: skip
    image_size: int = option(224, panel="Model", unit="pixels", help="Height and width of the (square) frames.")
    patch_size: int = option(16, panel="Model", unit="pixels", help="Spatial side of a cube.")
    tubelet_size: int = option(1, flags="--tubelet", panel="Model", unit="frames",
                               help="Temporal extent of a cube (1: every frame is tokenised on its own, as in the "
                               "paper).")  # fmt: skip
    num_frames: int = option(4, flags="--frames", panel="Model", unit="frames", help="Frames per clip.")
    width: int = option(768, panel="Model", unit="channels", help="Token width D of the video tower (768: ViT-B).")
    layers: int = option(12, panel="Model", unit="blocks", help="Transformer blocks of the video tower.")
    heads: int = option(12, panel="Model", help="Attention heads per block of the video tower.")
    mlp_ratio: float = 4.0
    """MLP hidden size as a multiple of the width."""
    output_dim: int | None = 256
    """Size of the final linear projection of the CLS token; None returns the width-sized features."""
    act: Activation = "gelu"
    """MLP activation; OpenAI's CLIP weights need `quick_gelu`."""
    attn_impl: AttnImpl = "sdpa"
    """`sdpa` lets torch pick a kernel; `math` stores the N×N matrix (baseline); `flash`, `efficient`,
    `cudnn` force that SDPA backend; `flash-attn` uses the flash-attn package; `fa4` FlashAttention-4's
    kernels (the flash-attn-4 package, Hopper and Blackwell GPUs)."""
    grad_checkpointing: bool = False
    """Recompute block activations in backward instead of storing them."""
    grad_checkpointing_blocks: int | None = None
    """With grad_checkpointing, checkpoint only the first k blocks (None: all)."""
    grad_checkpointing_keep_attention: int = 0
    """With grad_checkpointing, the last k checkpointed blocks keep their attention kernel's outputs for
    backward (selective checkpointing: about N·D·2 bytes per clip and block in bf16) instead of recomputing
    the attention, the costliest op per byte to recompute. SDPA's memory-efficient kernels and `fa4` only."""
    fast_conv1: bool = fast_conv1_option(False)
    """Compute the patch embedding as one matmul on unfolded cubes (same maths as the conv)."""
    drop_path_rate: float = 0.0
    """Stochastic depth rate of the last block, increasing linearly from 0 at the first."""
    patch_dropout: float = 0.0
    """Fraction of patch tokens dropped at random in training (the CLS token is always kept)."""
    low_precision_residual: bool = low_precision_residual_option()
    """Under autocast, carry the residual stream between blocks in the autocast dtype (bf16) instead of
    float32, as pure-bf16 training does: halves the block inputs that checkpointing keeps and the residual's
    memory traffic, at the cost of rounding the residual sums. Meant for bfloat16 (float16 may overflow)."""
    fused_mlp: bool = fused_mlp_option()
    """Compute each MLP with its activation in the matmuls' epilogues (quack's CuTe GEMMs on a Hopper or
    Blackwell GPU, plain PyTorch on a CPU): saves the activation's memory traffic; same maths."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid VideoTowerConfig:\n  " + "\n  ".join(problems))

    def problems(self) -> list[str]:
        """Everything wrong with this configuration, so that all of it can be reported at once."""
        out = []
        if self.arch not in ("vit", "timesformer"):
            out.append(f"arch={self.arch!r} is not 'vit' or 'timesformer'")
        if self.image_size % self.patch_size:
            out.append(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.num_frames % self.tubelet_size:
            out.append(f"num_frames={self.num_frames} is not a multiple of tubelet_size={self.tubelet_size}")
        if self.width % self.heads:
            out.append(f"width={self.width} is not divisible by heads={self.heads}")
        if self.act not in ("gelu", "quick_gelu"):
            out.append(f"act={self.act!r} is not 'gelu' or 'quick_gelu'")
        attn_problem = check_attn_impl(self.attn_impl)
        if attn_problem:
            out.append(attn_problem)
        if self.fused_mlp and (mlp_problem := check_fused_mlp()):
            out.append(mlp_problem)
        k = self.grad_checkpointing_blocks
        if k is not None and not 0 <= k <= self.layers:
            out.append(f"grad_checkpointing_blocks={k} is outside 0..layers={self.layers}")
        keep, checkpointed = self.grad_checkpointing_keep_attention, self.layers if k is None else k
        if not 0 <= keep <= checkpointed:
            out.append(
                f"grad_checkpointing_keep_attention={keep} is outside 0..{checkpointed} (the checkpointed blocks)"
            )
        elif keep and not self.grad_checkpointing:
            out.append("grad_checkpointing_keep_attention needs grad_checkpointing")
        elif keep and (problem := check_keeps_attention(self.attn_impl)):
            out.append(f"grad_checkpointing_keep_attention {problem}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            out.append(f"drop_path_rate={self.drop_path_rate} is outside [0, 1)")
        if not 0.0 <= self.patch_dropout < 1.0:
            out.append(f"patch_dropout={self.patch_dropout} is outside [0, 1)")
        if self.arch == "timesformer" and self.patch_dropout > 0:
            out.append("patch_dropout needs arch='vit': divided attention needs the full T×N token grid")
        return out

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def temporal_size(self) -> int:
        return self.num_frames // self.tubelet_size

    @classmethod
    def tiny(cls, **overrides: object) -> VideoTowerConfig:
        """A model small enough for CPU tests: 32×32 frames, 2×2 patches per frame, 2 blocks of width 64."""
        cfg = dict(image_size=32, patch_size=16, num_frames=2, width=64, layers=2, heads=4, output_dim=32)
        return cls(**{**cfg, **overrides})


class TokenDropout(nn.Module):
    """Keep a random subset of patch tokens per sample in training (FLIP's patch dropout)."""

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        cls, tokens = x[:, :1], x[:, 1:]
        B, L, D = tokens.shape
        keep = max(1, int(L * (1.0 - self.prob)))
        idx = torch.rand(B, L, device=x.device).argsort(dim=1)[:, :keep]
        tokens = tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, D))
        return torch.cat([cls, tokens], dim=1)

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class VideoViT(nn.Module):
    """Joint space–time ViT: CLIP's image tower with the frames' patches as extra tokens.

    Input (B, 3, T, H, W). Each token gets the spatial positional embedding of its patch (shared across
    frames) plus a learned temporal embedding of its time step (zero at init, so a CLIP-initialised
    model starts as a per-token image model). The output is the projected, layer-normed CLS token.
    """

    arch: VideoArch = "vit"

    def __init__(self, cfg: VideoTowerConfig) -> None:
        super().__init__()
        self._check_arch(cfg)
        self.cfg = cfg
        width = cfg.width
        scale = width**-0.5

        self.patch_embed = PatchEmbed(width, cfg.patch_size, cfg.tubelet_size, fast=cfg.fast_conv1)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + cfg.grid_size**2, width))
        self.temporal_embedding = nn.Parameter(torch.zeros(cfg.temporal_size, width))
        self.patch_dropout = TokenDropout(cfg.patch_dropout)
        self.ln_pre = nn.LayerNorm(width)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.layers).tolist()
        blocks = [self._make_block(cfg, rate) for rate in rates]
        self.transformer = Transformer(blocks, cfg.low_precision_residual)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Linear(width, cfg.output_dim, bias=False) if cfg.output_dim else None

        init_transformer_(self.transformer)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=scale)
        self.set_grad_checkpointing(
            cfg.grad_checkpointing, cfg.grad_checkpointing_blocks, cfg.grad_checkpointing_keep_attention
        )

    def _check_arch(self, cfg: VideoTowerConfig) -> None:
        if cfg.arch != self.arch:
            raise ValueError(f"{type(self).__name__} needs arch={self.arch!r}, got {cfg.arch!r}")

    def _make_block(self, cfg: VideoTowerConfig, drop_path: float) -> nn.Module:
        return Block(
            cfg.width, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.attn_impl, drop_path=drop_path, fused_mlp=cfg.fused_mlp
        )

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim or self.cfg.width

    def set_grad_checkpointing(self, enable: bool = True, blocks: int | None = None, keep_attention: int = 0) -> None:
        self.transformer.set_grad_checkpointing(enable, blocks, keep_attention)

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, 1 + T/t·N, D): CLS token then frame-major patch tokens, positions added."""
        cfg = self.cfg
        if tuple(video.shape[1:]) != (3, cfg.num_frames, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"expected clips of {cfg.num_frames} frames of 3×{cfg.image_size}×{cfg.image_size} "
                f"as (B, 3, T, H, W), got shape {tuple(video.shape)}"
            )
        x = self.patch_embed(video)
        B, L, D = x.shape
        pos = self.positional_embedding[1:].unsqueeze(0) + self.temporal_embedding.unsqueeze(1)  # (T, N, D)
        x = x + pos.reshape(1, L, D).to(x.dtype)
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(B, 1, D)
        x = torch.cat([cls, x], dim=1)
        return self.ln_pre(self.patch_dropout(x))

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(x)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """All output tokens after ln_post, (B, 1 + L, D)."""
        return self.ln_post(self.forward_blocks(self.embed(video)))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        # ln_post acts per token, so normalising the CLS token alone gives CLIP's result. The copy lets
        # the last block's (B, L, D) output be freed: saving a view for backward would keep all of it.
        x = self.ln_post(self.forward_blocks(self.embed(video))[:, 0].clone())
        return self.proj(x) if self.proj is not None else x


class TimeSformer(VideoViT):
    """TimeSformer with divided space–time attention (Bertasius et al. 2021), built like `VideoViT`.

    Spatial attention, MLP and embeddings have the same names and shapes as the ViT's, so CLIP weights
    map onto it the same way; the temporal attention of each block is new.
    """

    arch: VideoArch = "timesformer"

    def _make_block(self, cfg: VideoTowerConfig, drop_path: float) -> nn.Module:
        return DividedSpaceTimeBlock(
            cfg.width, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.attn_impl, drop_path, fused_mlp=cfg.fused_mlp
        )

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(x, num_frames=self.cfg.temporal_size)


def build_video_tower(cfg: VideoTowerConfig) -> VideoViT:
    """The tower named by ``cfg.arch``."""
    return TimeSformer(cfg) if cfg.arch == "timesformer" else VideoViT(cfg)
