"""open_clip configs and weights mapped onto avtool towers. No downloads: open_clip models are random."""

import warnings

import open_clip
import pytest
import torch

from avtool.models import DualEncoder, TextTransformer, VideoClassifier, VideoViT, build_video_tower
from avtool.models.open_clip_weights import (
    create_open_clip_model,
    dual_encoder_config_from_open_clip,
    load_open_clip_weights,
    text_config_from_open_clip,
    video_config_from_open_clip,
)

TINY_CLIP = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=16, width=64, layers=2, head_width=16),
    text_cfg=dict(context_length=16, vocab_size=1000, width=64, heads=4, layers=2),
)


@pytest.fixture(scope="module")
def tiny_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.CLIP(**TINY_CLIP).eval()


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def tokens(batch: int = 2) -> torch.Tensor:
    text = torch.randint(1, 998, (batch, 16))
    text[0, 5], text[1, 9] = 999, 999  # EOT (largest id) at different places
    return text


def test_config_from_open_clip_names() -> None:
    b16 = video_config_from_open_clip("ViT-B-16")
    assert (b16.width, b16.layers, b16.heads, b16.patch_size, b16.image_size) == (768, 12, 12, 16, 224)
    assert (b16.output_dim, b16.act) == (512, "gelu")
    l14 = video_config_from_open_clip("ViT-L-14", num_frames=16)
    assert (l14.width, l14.layers, l14.heads, l14.patch_size, l14.num_frames) == (1024, 24, 16, 14, 16)
    t = text_config_from_open_clip("ViT-L-14")
    assert (t.width, t.layers, t.heads, t.context_length, t.vocab_size) == (768, 12, 12, 77, 49408)
    # OpenAI's weights need QuickGELU; the tag says so even though the plain name's config does not.
    assert video_config_from_open_clip("ViT-B-16", pretrained="openai").act == "quick_gelu"
    assert text_config_from_open_clip("ViT-B-16-quickgelu").act == "quick_gelu"
    dual = dual_encoder_config_from_open_clip("ViT-B-16", video={"num_frames": 4, "attn_impl": "math"})
    assert dual.embed_dim == 256 and dual.video.attn_impl == "math" and dual.text.output_dim == 256


def test_unsupported_open_clip_towers_are_refused_with_the_reason() -> None:
    with pytest.raises(NotImplementedError, match="timm's 'eva02_base"):
        video_config_from_open_clip("EVA02-B-16")
    with pytest.raises(NotImplementedError, match="ResNet"):
        video_config_from_open_clip("RN50")
    with pytest.raises(NotImplementedError, match="attentional_pool"):
        video_config_from_open_clip("coca_ViT-B-32")
    with pytest.raises(NotImplementedError, match="Hugging Face"):
        text_config_from_open_clip("roberta-ViT-B-32")
    with pytest.raises(ValueError, match="no model config"):
        video_config_from_open_clip("ViT-Q-99")


@pytest.mark.parametrize("fast_conv1", [False, True])
def test_one_frame_video_tower_equals_encode_image(tiny_clip: torch.nn.Module, fast_conv1: bool) -> None:
    model = VideoViT(video_config_from_open_clip(TINY_CLIP, num_frames=1, fast_conv1=fast_conv1)).eval()
    missing = load_open_clip_weights(model, tiny_clip)
    assert missing == ["temporal_embedding"]
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x.unsqueeze(2)), tiny_clip.encode_image(x), atol=1e-5, rtol=1e-5)


def test_static_clip_through_timesformer_equals_encode_image(tiny_clip: torch.nn.Module) -> None:
    # Spatial attention is per frame and the fresh temporal branch is zero, so a clip of one repeated
    # image must give the image's embedding: this checks the CLS copy/average and token reshapes.
    cfg = video_config_from_open_clip(TINY_CLIP, num_frames=3, arch="timesformer")
    model = build_video_tower(cfg).eval()
    missing = load_open_clip_weights(model, tiny_clip)
    assert "temporal_embedding" in missing and all("temporal_attn" not in k for k in missing)
    x = images()
    with torch.no_grad():
        out = model(x.unsqueeze(2).expand(-1, -1, 3, -1, -1))
        torch.testing.assert_close(out, tiny_clip.encode_image(x), atol=1e-5, rtol=1e-5)


def test_tubelet_inflation_keeps_static_clips(tiny_clip: torch.nn.Module) -> None:
    model = VideoViT(video_config_from_open_clip(TINY_CLIP, num_frames=2, tubelet_size=2)).eval()
    load_open_clip_weights(model, tiny_clip)
    x = images()
    with torch.no_grad():
        out = model(x.unsqueeze(2).expand(-1, -1, 2, -1, -1))
        torch.testing.assert_close(out, tiny_clip.encode_image(x), atol=1e-5, rtol=1e-5)


def test_text_tower_equals_encode_text(tiny_clip: torch.nn.Module) -> None:
    model = TextTransformer(text_config_from_open_clip(TINY_CLIP)).eval()
    assert load_open_clip_weights(model, tiny_clip) == []
    text = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(text), tiny_clip.encode_text(text), atol=1e-5, rtol=1e-5)


def test_dual_encoder_from_open_clip(tiny_clip: torch.nn.Module) -> None:
    cfg = dual_encoder_config_from_open_clip(TINY_CLIP, embed_dim=32, video={"num_frames": 1})
    model = DualEncoder(cfg).eval()
    missing = load_open_clip_weights(model, tiny_clip.state_dict(), load_logit_scale=True)
    assert missing == ["video.temporal_embedding"]
    x, text = images(), tokens()
    with torch.no_grad():
        out = model(x.unsqueeze(2), text)
        ref_video, ref_text = tiny_clip.encode_image(x, normalize=True), tiny_clip.encode_text(text, normalize=True)
    torch.testing.assert_close(out.video, ref_video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text, ref_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.logit_scale, tiny_clip.logit_scale)


def test_paper_embed_dim_keeps_fresh_projections(tiny_clip: torch.nn.Module) -> None:
    model = DualEncoder(dual_encoder_config_from_open_clip(TINY_CLIP, embed_dim=16))
    missing = load_open_clip_weights(model, tiny_clip)
    fresh = ["logit_scale", "text.proj.weight", "video.proj.weight", "video.temporal_embedding"]
    assert sorted(missing) == fresh
    torch.testing.assert_close(model.video.class_embedding, tiny_clip.visual.class_embedding)


def test_classifier_from_open_clip(tiny_clip: torch.nn.Module) -> None:
    cfg = video_config_from_open_clip(TINY_CLIP, num_frames=2, output_dim=None)
    model = VideoClassifier(cfg, num_classes=10)
    missing = load_open_clip_weights(model, tiny_clip)
    assert sorted(missing) == ["head.bias", "head.weight", "video.temporal_embedding"]


def test_activation_mismatch_is_refused(tiny_clip: torch.nn.Module) -> None:
    model = VideoViT(video_config_from_open_clip(TINY_CLIP, act="quick_gelu"))
    with pytest.raises(ValueError, match="uses gelu"):
        load_open_clip_weights(model, tiny_clip)


def test_layer_mismatch_is_refused(tiny_clip: torch.nn.Module) -> None:
    model = VideoViT(video_config_from_open_clip(TINY_CLIP, layers=3))
    with pytest.raises(ValueError, match="2 blocks"):
        load_open_clip_weights(model, tiny_clip)


def test_vit_b16_mapping() -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = create_open_clip_model("ViT-B-16", pretrained=None).eval()
    video_tower = VideoViT(video_config_from_open_clip("ViT-B-16", num_frames=1, fast_conv1=True)).eval()
    text_tower = TextTransformer(text_config_from_open_clip("ViT-B-16")).eval()
    assert load_open_clip_weights(video_tower, clip) == ["temporal_embedding"]
    assert load_open_clip_weights(text_tower, clip) == []
    x = images(batch=1, size=224)
    text = open_clip.get_tokenizer("ViT-B-16")(["a person cuts a tomato"])
    with torch.no_grad():
        torch.testing.assert_close(video_tower(x.unsqueeze(2)), clip.encode_image(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(text_tower(text), clip.encode_text(text), atol=1e-4, rtol=1e-4)
