"""Tower shapes from open_clip model configs, and open_clip weights mapped onto avtool's towers.

Only OpenAI-style towers (CLIP's own ViT and text transformer) can be mapped. Configs whose towers come
from timm or Hugging Face (EVA, SigLIP, ...) or use variants avtool does not implement (attentional
pooling, layer scale, QK-norm, ...) are refused with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import open_clip
import torch
from torch import nn

from avtool.models.classifier import VideoClassifier
from avtool.models.dual_encoder import DualEncoder, DualEncoderConfig
from avtool.models.text import TextTowerConfig, TextTransformer
from avtool.models.video import VideoTowerConfig, VideoViT

# Keys of open_clip's vision/text configs that avtool reads or that do not change the tower's maths (output
# options, tokenizer settings), and the value any other key must have for the tower to be one avtool
# implements (open_clip's defaults).
_VISION_READ = {
    "layers",
    "width",
    "head_width",
    "mlp_ratio",
    "patch_size",
    "image_size",
    "patch_dropout",
    "output_tokens",
}
_VISION_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_TEXT_READ = {
    "context_length",
    "vocab_size",
    "width",
    "heads",
    "layers",
    "mlp_ratio",
    "hf_tokenizer_name",
    "tokenizer_kwargs",
    "tokenizer_mode",
    "pad_id",
    "eos_id",
    "output_tokens",
}
_TEXT_DEFAULTS: dict[str, Any] = {
    "ls_init_value": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "proj_type": "linear",
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}


def open_clip_model_config(model: str | Mapping[str, Any]) -> dict[str, Any]:
    """open_clip's config for a model name, or ``model`` itself when it already is such a config."""
    if not isinstance(model, str):
        return dict(model)
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ValueError(f"open_clip has no model config named {model!r}; see open_clip.list_models()")
    return cfg


def _quick_gelu(cfg: Mapping[str, Any], model: str | Mapping[str, Any], pretrained: str | None) -> bool:
    # OpenAI's weights were trained with QuickGELU but open_clip's plain names (ViT-B-16) use GELU; the
    # pretrained tag's config says which one the weights need.
    if isinstance(model, str) and pretrained:
        tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
        if "quick_gelu" in tag_cfg:
            return bool(tag_cfg["quick_gelu"])
    return bool(cfg.get("quick_gelu", False))


def _check_keys(section: str, cfg: Mapping[str, Any], read: set[str], defaults: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, value in cfg.items():
        if key in read:
            continue
        if key not in defaults:
            problems.append(f"{section}.{key}={value!r} is not understood by avtool")
        elif value != defaults[key]:
            problems.append(f"{section}.{key}={value!r} is not supported (avtool needs {defaults[key]!r})")
    return problems


def _unsupported(what: str, problems: list[str]) -> NotImplementedError:
    lines = "\n  ".join(problems)
    return NotImplementedError(f"cannot build an avtool {what} from this open_clip config:\n  {lines}")


def video_config_from_open_clip(
    model: str | Mapping[str, Any], *, pretrained: str | None = None, **overrides: Any
) -> VideoTowerConfig:
    """A `VideoTowerConfig` with the shape of an open_clip model's image tower.

    ``model`` is an open_clip model name (``ViT-B-16``) or its config dict. ``pretrained`` (a tag) only
    selects the activation the weights were trained with. ``output_dim`` defaults to open_clip's
    ``embed_dim`` so that the image projection loads too; ``overrides`` set any other field.
    """
    cfg = open_clip_model_config(model)
    vision = dict(cfg["vision_cfg"])
    if vision.get("timm_model_name"):
        raise _unsupported("video tower", [f"the image tower is timm's {vision['timm_model_name']!r}, not CLIP's ViT"])
    problems = _check_keys("vision_cfg", vision, _VISION_READ, _VISION_DEFAULTS)
    if not isinstance(vision.get("layers", 12), int):
        problems.append("vision_cfg.layers is a tuple: a ResNet image tower, not a ViT")
    if problems:
        raise _unsupported("video tower", problems)
    width = vision.get("width", 768)
    image_size, patch_size = vision.get("image_size", 224), vision.get("patch_size", 16)
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if isinstance(value, (tuple, list)):
            if value[0] != value[1]:
                raise _unsupported("video tower", [f"vision_cfg.{name}={value!r} is not square"])
    fields: dict[str, Any] = dict(
        image_size=image_size[0] if isinstance(image_size, (tuple, list)) else image_size,
        patch_size=patch_size[0] if isinstance(patch_size, (tuple, list)) else patch_size,
        width=width,
        layers=vision.get("layers", 12),
        heads=width // vision.get("head_width", 64),
        mlp_ratio=vision.get("mlp_ratio", 4.0),
        patch_dropout=vision.get("patch_dropout", 0.0),
        output_dim=cfg["embed_dim"],
        act="quick_gelu" if _quick_gelu(cfg, model, pretrained) else "gelu",
    )
    return VideoTowerConfig(**{**fields, **overrides})


def text_config_from_open_clip(
    model: str | Mapping[str, Any], *, pretrained: str | None = None, **overrides: Any
) -> TextTowerConfig:
    """A `TextTowerConfig` with the shape of an open_clip model's text tower (see the video version)."""
    cfg = open_clip_model_config(model)
    text = dict(cfg["text_cfg"])
    if text.get("hf_model_name"):
        raise _unsupported("text tower", [f"the text tower is Hugging Face's {text['hf_model_name']!r}"])
    problems = _check_keys("text_cfg", text, _TEXT_READ, _TEXT_DEFAULTS)
    if problems:
        raise _unsupported("text tower", problems)
    fields: dict[str, Any] = dict(
        context_length=text.get("context_length", 77),
        vocab_size=text.get("vocab_size", 49408),
        width=text.get("width", 512),
        layers=text.get("layers", 12),
        heads=text.get("heads", 8),
        mlp_ratio=text.get("mlp_ratio", 4.0),
        output_dim=cfg["embed_dim"],
        act="quick_gelu" if _quick_gelu(cfg, model, pretrained) else "gelu",
    )
    return TextTowerConfig(**{**fields, **overrides})


def dual_encoder_config_from_open_clip(
    model: str | Mapping[str, Any],
    *,
    pretrained: str | None = None,
    embed_dim: int = 256,
    video: Mapping[str, Any] | None = None,
    text: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> DualEncoderConfig:
    """A `DualEncoderConfig` with an open_clip model's tower shapes and an ``embed_dim`` projection.

    ``video`` and ``text`` override fields of the towers (e.g. ``video={"num_frames": 16}``), the rest
    override `DualEncoderConfig` fields. With the paper's 256-d embedding the projections differ in
    shape from CLIP's and start from scratch.
    """
    return DualEncoderConfig(
        video=video_config_from_open_clip(model, pretrained=pretrained, **{"output_dim": embed_dim, **(video or {})}),
        text=text_config_from_open_clip(model, pretrained=pretrained, **{"output_dim": embed_dim, **(text or {})}),
        **overrides,
    )


def create_open_clip_model(name: str, pretrained: str | None = None) -> nn.Module:
    """``open_clip.create_model`` on CPU, with QuickGELU when the pretrained tag needs it.

    ``pretrained`` is a tag (downloads through open_clip's cache) or a local checkpoint file.
    """
    cfg = open_clip_model_config(name)
    quick_gelu = _quick_gelu(cfg, name, pretrained)
    return open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu)


def _map_block(src: str, dst: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj"):
        for p in ("weight", "bias"):
            out[f"{dst}.{name}.{p}"] = sd[f"{src}.{name}.{p}"]
    out[f"{dst}.attn.qkv.weight"] = sd[f"{src}.attn.in_proj_weight"]
    out[f"{dst}.attn.qkv.bias"] = sd[f"{src}.attn.in_proj_bias"]
    out[f"{dst}.attn.proj.weight"] = sd[f"{src}.attn.out_proj.weight"]
    out[f"{dst}.attn.proj.bias"] = sd[f"{src}.attn.out_proj.bias"]
    return out


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def _check_layers(what: str, sd: Mapping[str, torch.Tensor], prefix: str, expected: int) -> None:
    found = _count_blocks(sd, prefix)
    if found != expected:
        raise ValueError(f"open_clip {what} has {found} blocks, the avtool tower has {expected}")


def map_open_clip_visual(sd: Mapping[str, torch.Tensor], tower: VideoViT) -> dict[str, torch.Tensor]:
    """open_clip ``visual.*`` weights renamed (and reshaped) to ``tower``'s state-dict keys.

    The 2D patch conv becomes a cube conv by spreading it evenly over the t frames of a cube (so a
    static clip gives the image's tokens); the temporal embedding is not in CLIP and is left out. For a
    TimeSformer the temporal attention starts as a copy of the spatial one, as in Bertasius et al.
    """
    cfg = tower.cfg
    _check_layers("image tower", sd, "visual.transformer.resblocks.", cfg.layers)
    conv = sd["visual.conv1.weight"]
    t = cfg.tubelet_size
    out = {
        "patch_embed.proj.weight": conv.unsqueeze(2).repeat(1, 1, t, 1, 1) / t,
        "class_embedding": sd["visual.class_embedding"],
        "positional_embedding": sd["visual.positional_embedding"],
    }
    for name in ("ln_pre", "ln_post"):
        for p in ("weight", "bias"):
            out[f"{name}.{p}"] = sd[f"visual.{name}.{p}"]
    for i in range(cfg.layers):
        block = _map_block(f"visual.transformer.resblocks.{i}", f"transformer.blocks.{i}", sd)
        out.update(block)
        if cfg.arch == "timesformer":
            for key, value in block.items():
                if ".attn." in key or ".ln_1." in key:
                    out[key.replace(".attn.", ".temporal_attn.").replace(".ln_1.", ".temporal_ln.")] = value
    proj = sd.get("visual.proj")
    if tower.proj is not None and proj is not None and proj.t().shape == tower.proj.weight.shape:
        out["proj.weight"] = proj.t()
    return out


def map_open_clip_text(sd: Mapping[str, torch.Tensor], tower: TextTransformer) -> dict[str, torch.Tensor]:
    """open_clip text-tower weights renamed to ``tower``'s state-dict keys.

    Handles both open_clip layouts: ``CLIP`` (text weights at the top level) and ``CustomTextCLIP``
    (under ``text.``). A shorter context keeps the first positions, as the text is left-aligned.
    """
    cfg = tower.cfg
    src = "text." if "text.token_embedding.weight" in sd else ""
    _check_layers("text tower", sd, f"{src}transformer.resblocks.", cfg.layers)
    pos = sd[f"{src}positional_embedding"]
    if pos.shape[0] < cfg.context_length:
        raise ValueError(f"open_clip's text context is {pos.shape[0]}, the tower wants {cfg.context_length}")
    out = {
        "token_embedding.weight": sd[f"{src}token_embedding.weight"],
        "positional_embedding": pos[: cfg.context_length],
        "ln_final.weight": sd[f"{src}ln_final.weight"],
        "ln_final.bias": sd[f"{src}ln_final.bias"],
    }
    for i in range(cfg.layers):
        out.update(_map_block(f"{src}transformer.resblocks.{i}", f"transformer.blocks.{i}", sd))
    proj = sd.get(f"{src}text_projection")
    if tower.proj is not None and proj is not None and proj.t().shape == tower.proj.weight.shape:
        out["proj.weight"] = proj.t()
    return out


def _check_activation(source: nn.Module, part: str, act: str) -> None:
    # A GELU/QuickGELU mix-up loads without error and silently degrades the features, so refuse it.
    module = getattr(source, part, None)
    if module is None:
        return
    quick = any(isinstance(m, open_clip.transformer.QuickGELU) for m in module.modules())
    if quick != (act == "quick_gelu"):
        found = "quick_gelu" if quick else "gelu"
        raise ValueError(f"open_clip {part} uses {found} but the avtool tower has act={act!r}")


def _with_prefix(prefix: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def load_open_clip_weights(
    model: DualEncoder | VideoViT | TextTransformer | VideoClassifier,
    source: nn.Module | Mapping[str, torch.Tensor],
    *,
    load_logit_scale: bool = False,
) -> list[str]:
    """Copy an open_clip model's weights (or its state dict) into ``model``.

    Returns the names of ``model``'s parameters that had nothing to load from and keep their
    initialisation: the temporal embedding, projections whose shape differs from CLIP's, a classifier
    head, and the logit scale unless ``load_logit_scale`` (the paper restarts the temperature at 0.07).
    Given a model rather than a state dict, a GELU/QuickGELU mismatch with the tower config is refused.
    """
    if isinstance(source, nn.Module):
        if isinstance(model, (DualEncoder, VideoClassifier, VideoViT)):
            video_tower = model if isinstance(model, VideoViT) else model.video
            _check_activation(source, "visual", video_tower.cfg.act)
        if isinstance(model, (DualEncoder, TextTransformer)):
            text_tower = model if isinstance(model, TextTransformer) else model.text
            text_part = "text" if hasattr(source, "text") else "transformer"
            _check_activation(source, text_part, text_tower.cfg.act)
        sd = source.state_dict()
    else:
        sd = dict(source)

    if isinstance(model, VideoViT):
        mapped = map_open_clip_visual(sd, model)
    elif isinstance(model, TextTransformer):
        mapped = map_open_clip_text(sd, model)
    elif isinstance(model, VideoClassifier):
        mapped = _with_prefix("video.", map_open_clip_visual(sd, model.video))
    elif isinstance(model, DualEncoder):
        mapped = {
            **_with_prefix("video.", map_open_clip_visual(sd, model.video)),
            **_with_prefix("text.", map_open_clip_text(sd, model.text)),
        }
        if load_logit_scale:
            mapped["logit_scale"] = sd["logit_scale"]
    else:
        raise TypeError(f"cannot load open_clip weights into {type(model).__name__}")

    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected:  # the mapping produced a name the model does not have: a bug, never a user error
        raise RuntimeError(f"open_clip mapping produced unknown keys: {unexpected}")
    return missing
