"""Video and video–text models: joint space–time ViT, TimeSformer, CLIP text tower, dual encoder.

open_clip weights and configs are in `avtool.models.open_clip_weights` (not imported here: open_clip
takes seconds to import and training from an avtool checkpoint does not need it).
"""

from avtool.models.attention import (
    ATTN_IMPLS,
    Attention,
    AttnImpl,
    attention,
    flash_attn_available,
    fused_attention,
)
from avtool.models.blocks import Block, DividedSpaceTimeBlock, DropPath, Transformer
from avtool.models.classifier import VideoClassifier
from avtool.models.dual_encoder import DualEncoder, DualEncoderConfig, DualEncoderOutput
from avtool.models.patch_embed import PatchEmbed
from avtool.models.temporal_embedding import (
    interpolate_temporal_embedding,
    load_state_dict_resized,
    resize_temporal_embeddings,
)
from avtool.models.text import TextTowerConfig, TextTransformer
from avtool.models.video import TimeSformer, TokenDropout, VideoTowerConfig, VideoViT, build_video_tower

__all__ = [
    "ATTN_IMPLS",
    "Attention",
    "AttnImpl",
    "Block",
    "DividedSpaceTimeBlock",
    "DropPath",
    "DualEncoder",
    "DualEncoderConfig",
    "DualEncoderOutput",
    "PatchEmbed",
    "TextTowerConfig",
    "TextTransformer",
    "TimeSformer",
    "TokenDropout",
    "Transformer",
    "VideoClassifier",
    "VideoTowerConfig",
    "VideoViT",
    "attention",
    "build_video_tower",
    "flash_attn_available",
    "fused_attention",
    "interpolate_temporal_embedding",
    "load_state_dict_resized",
    "resize_temporal_embeddings",
]
