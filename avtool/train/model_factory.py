"""Build the models the training jobs train, from a small typed config, and rebuild them from checkpoints.

A job names a tower shape by its open_clip model name (``ViT-B-16``, ``ViT-L-14``) or ``tiny`` (CPU tests
and the CPU demo), starts from open_clip weights (``pretrained``), from an avtool checkpoint (fine-tuning
from pretraining), or from random initialisation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from avtool.errors import AvtoolError, config_error
from avtool.models import (
    DualEncoder,
    DualEncoderConfig,
    TextTowerConfig,
    VideoClassifier,
    VideoTowerConfig,
    load_state_dict_resized,
)
from avtool.models.videomae import VideoMAE, VideoMAEClassifier, VideoMAEConfig
from avtool.train.model_config import ModelConfig

__all__ = ["ModelConfig", "build_classifier", "build_dual_encoder", "dual_encoder_config"]

TINY = "tiny"
# The CLIP BPE tokenizer's vocabulary: the text tower must embed every id it produces, tiny or not.
CLIP_VOCAB_SIZE = 49408


def _tower_configs(cfg: ModelConfig) -> tuple[VideoTowerConfig, TextTowerConfig]:
    video = dict(
        num_frames=cfg.num_frames, output_dim=cfg.embed_dim, attn_impl=cfg.attn,
        grad_checkpointing=cfg.grad_checkpointing, grad_checkpointing_blocks=cfg.ckpt_blocks,
        grad_checkpointing_keep_attention=cfg.ckpt_keep_attention, fast_conv1=cfg.fast_conv1,
        drop_path_rate=cfg.drop_path, patch_dropout=cfg.patch_dropout, fused_mlp=cfg.fused_mlp,
        low_precision_residual=cfg.low_precision_residual,
    )  # fmt: skip
    text = dict(output_dim=cfg.embed_dim, attn_impl=cfg.attn, grad_checkpointing=cfg.grad_checkpointing,
                fused_mlp=cfg.fused_mlp, low_precision_residual=cfg.low_precision_residual)  # fmt: skip
    try:
        if cfg.name == TINY:
            # 4×4 patches per frame: small enough for a CPU, large enough to see the sample's objects move.
            return (
                VideoTowerConfig.tiny(image_size=64, width=128, **video),
                TextTowerConfig.tiny(vocab_size=CLIP_VOCAB_SIZE, width=128, **text),
            )
        from avtool.models.open_clip_weights import text_config_from_open_clip, video_config_from_open_clip

        return (
            video_config_from_open_clip(cfg.name, pretrained=_tag(cfg.pretrained), **video),
            text_config_from_open_clip(cfg.name, pretrained=_tag(cfg.pretrained), **text),
        )
    except (ValueError, NotImplementedError) as e:
        # e.g. --ckpt-keep-attention above the model's block count, known only once its shape is.
        raise config_error(e, f"--model {cfg.name}: ") from None


def _tag(pretrained: str | None) -> str | None:
    """The open_clip tag of ``pretrained`` (a local file has none)."""
    return None if pretrained is None or Path(pretrained).exists() else pretrained


def dual_encoder_config(cfg: ModelConfig) -> DualEncoderConfig:
    video, text = _tower_configs(cfg)
    return DualEncoderConfig(video=video, text=text, freeze_logit_scale=cfg.freeze_temperature)


def classifier_tower_config(cfg: ModelConfig) -> VideoTowerConfig:
    """The video tower of a classifier: no projection, the head reads the width-sized CLS feature."""
    video, _ = _tower_configs(cfg)
    return dataclasses.replace(video, output_dim=None)


def load_open_clip_into(model: DualEncoder | VideoClassifier, cfg: ModelConfig) -> list[str]:
    """Load ``cfg.pretrained`` (open_clip weights); returns the parameters left at their initialisation."""
    from avtool.models.open_clip_weights import create_open_clip_model, load_open_clip_weights

    try:
        source = create_open_clip_model(cfg.name, pretrained=cfg.pretrained)
    except Exception as e:  # open_clip raises many types for a bad tag, a missing file or no network
        raise AvtoolError(f"cannot load open_clip weights {cfg.name}/{cfg.pretrained}: {e}") from None
    return load_open_clip_weights(model, source)


def build_dual_encoder(cfg: ModelConfig) -> DualEncoder:
    model = DualEncoder(dual_encoder_config(cfg))
    if cfg.pretrained:
        load_open_clip_into(model, cfg)
    return model


def build_classifier(cfg: ModelConfig, num_classes: int, dropout: float) -> VideoClassifier:
    model = VideoClassifier(classifier_tower_config(cfg), num_classes=num_classes, dropout=dropout)
    if cfg.pretrained:
        load_open_clip_into(model, cfg)
    return model


def model_config_dict(model: DualEncoder | VideoClassifier | VideoMAE | VideoMAEClassifier) -> dict[str, Any]:
    """What a checkpoint stores to rebuild ``model`` without the job's config."""
    if isinstance(model, DualEncoder):
        return {"kind": "dual_encoder", "config": dataclasses.asdict(model.cfg)}
    if isinstance(model, VideoMAE):
        return {"kind": "videomae", "config": dataclasses.asdict(model.config)}
    if isinstance(model, VideoMAEClassifier):
        return {"kind": "videomae_classifier", "config": dataclasses.asdict(model.config),
                "num_classes": model.num_classes}  # fmt: skip
    return {
        "kind": "classifier", "video": dataclasses.asdict(model.cfg), "num_classes": model.head.out_features,
        "dropout": model.dropout.p,
    }  # fmt: skip


def model_from_config_dict(record: dict[str, Any]) -> DualEncoder | VideoClassifier | VideoMAE | VideoMAEClassifier:
    """The model a checkpoint's record describes. The record comes from a file, so a record of an unknown kind,
    with missing or unknown fields or values the configs refuse, is one AvtoolError, not a traceback."""
    try:
        return _model_from_record(record)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        kind = record.get("kind") if isinstance(record, dict) else None
        raise AvtoolError(f"the checkpoint's model record ({kind or 'no kind'}) is not one avtool writes: "
                          f"{type(e).__name__}: {e}") from None  # fmt: skip


def _model_from_record(record: dict[str, Any]) -> DualEncoder | VideoClassifier | VideoMAE | VideoMAEClassifier:
    if record["kind"] == "videomae":
        return VideoMAE(VideoMAEConfig(**record["config"]))
    if record["kind"] == "videomae_classifier":
        return VideoMAEClassifier(VideoMAEConfig(**record["config"]), int(record["num_classes"]))
    if record["kind"] == "dual_encoder":
        c = dict(record["config"])
        video, text = VideoTowerConfig(**c.pop("video")), TextTowerConfig(**c.pop("text"))
        return DualEncoder(DualEncoderConfig(video=video, text=text, **c))
    if record["kind"] == "classifier":
        return VideoClassifier(VideoTowerConfig(**record["video"]), int(record["num_classes"]), record["dropout"])
    raise KeyError(f"unknown model kind {record['kind']!r}")


def with_tower_options(record: dict[str, Any], **video_overrides: Any) -> dict[str, Any]:
    """A copy of a model record with video-tower fields replaced (e.g. 16 frames and flash attention for
    evaluating a 4-frame checkpoint)."""
    record = {**record}
    if record["kind"] == "dual_encoder":
        config = dict(record["config"])
        config["video"] = {**config["video"], **video_overrides}
        record["config"] = config
    else:
        record["video"] = {**record["video"], **video_overrides}
    return record


def load_video_tower_from_checkpoint(model: DualEncoder | VideoClassifier, state_dict: dict[str, torch.Tensor]) -> None:
    """Initialise ``model`` from a pretraining (dual encoder) state dict, for fine-tuning.

    A dual encoder loads everything (the temporal embedding interpolated to the new frame count); a
    classifier loads the video tower without its projection (the paper drops the projection head and
    attaches a new one).
    """
    if isinstance(model, DualEncoder):
        missing, unexpected = load_state_dict_resized(model, state_dict, strict=False)
    else:
        video = {k.removeprefix("video."): v for k, v in state_dict.items() if k.startswith("video.")}
        video = {k: v for k, v in video.items() if not k.startswith("proj.")}
        missing, unexpected = load_state_dict_resized(model.video, video, strict=False)
    if unexpected or [k for k in missing if not k.startswith("head.")]:
        raise AvtoolError(
            "the pretrained checkpoint does not match the model: "
            f"missing {', '.join(missing[:5]) or '-'}; unexpected {', '.join(unexpected[:5]) or '-'} "
            "(was it made with another --model?)"
        )
