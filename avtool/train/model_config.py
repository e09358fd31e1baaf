"""What to train, as a config that imports without torch: the model's shape and the memory/speed options
of §4.1, each defined once and shared by `avtool train` and `avtool bench model|memory`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from avtool.model_options import (
    AttnImpl,
    attn_option,
    ckpt_blocks_option,
    ckpt_keep_attention_option,
    fast_conv1_option,
    fused_mlp_option,
    grad_checkpointing_option,
    low_precision_residual_option,
)
from avtool.options import option

__all__ = ["ModelConfig", "attn_option", "pretrained_checkpoint_option"]


def pretrained_checkpoint_option(help: str | None = None) -> Any:
    return option(
        None,
        flags=("--pretrained-checkpoint", "--pretrain-model"),
        panel="Model",
        metavar="FILE",
        help=help
        or "An `avtool train lavila` checkpoint whose video tower (and text tower, for MIR) to start "
        "from; its temporal embedding is interpolated to --frames (AVION's --pretrain-model).",
    )


@dataclass(frozen=True)
class ModelConfig:
    """Which model to train and the memory/speed options of §4.1 (defaults: the paper's ViT-B/16)."""

    name: str = option(
        "ViT-B-16", flags="--model", panel="Model",
        help="Tower shapes: an open_clip model name (ViT-B-16, ViT-L-14) or tiny (CPU smoke tests and the demo).",
    )  # fmt: skip
    pretrained: str | None = option(
        None, flags=("--pretrained", "--pretrain-zoo"), panel="Model", metavar="TAG|FILE",
        help="open_clip weights to start from: a tag such as openai (open_clip downloads it) or a local file; none: "
        "random initialisation.",
    )  # fmt: skip
    num_frames: int = option(
        4,
        flags=("--frames", "--clip-length"),
        panel="Model",
        unit="frames",
        help="Frames per clip (pretraining 4, fine-tuning 16; AVION's --clip-length).",
    )
    embed_dim: int = option(256, panel="Model", help="Size of the joint video-text embedding.")
    attn: AttnImpl = attn_option()
    grad_checkpointing: bool = grad_checkpointing_option()
    ckpt_blocks: int | None = ckpt_blocks_option()
    ckpt_keep_attention: int = ckpt_keep_attention_option()
    fast_conv1: bool = fast_conv1_option()
    fused_mlp: bool = fused_mlp_option()
    low_precision_residual: bool = low_precision_residual_option()
    drop_path: float = option(0.0, panel="Model", help="Stochastic depth rate of the last video block.")
    patch_dropout: float = option(0.0, panel="Model", help="Fraction of video patch tokens dropped in training, 0-1.")
    freeze_temperature: bool = option(False, panel="Model",
                                      help="Keep the contrastive temperature fixed at 0.07 (AVION's "
                                      "--freeze-temperature).")  # fmt: skip

    def problems(self) -> list[str]:
        from avtool.models.attention import check_attn_impl, check_keeps_attention

        out = []
        if self.num_frames < 1:
            out.append(f"num_frames={self.num_frames} must be at least 1")
        if self.embed_dim < 1:
            out.append(f"embed_dim={self.embed_dim} must be at least 1")
        attn_problem = check_attn_impl(self.attn)
        if attn_problem:
            out.append(attn_problem)
        if self.ckpt_keep_attention < 0:
            out.append(f"ckpt_keep_attention={self.ckpt_keep_attention} must be at least 0")
        elif self.ckpt_keep_attention and not self.grad_checkpointing:
            out.append("ckpt_keep_attention needs gradient checkpointing")
        elif self.ckpt_keep_attention and (problem := check_keeps_attention(self.attn)):
            out.append(f"ckpt_keep_attention {problem}")
        if self.ckpt_blocks is not None and (self.ckpt_blocks < 0 or not self.grad_checkpointing):
            out.append(f"ckpt_blocks={self.ckpt_blocks} needs gradient checkpointing and at least 0 blocks")
        return out
