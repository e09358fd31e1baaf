"""VideoMAE's model, masks and loss on the CPU: the reference shapes, the masks' counts and patterns, the
targets against a hand computation, and an encoder that never sees what it must reconstruct."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from avtool.models.videomae import (
    VIDEOMAE_SIZES,
    VideoMAE,
    cube_targets,
    reconstruction_loss,
    running_cell_mask,
    sincos_table,
    tube_mask,
)

pytest_plugins = ("tests.clip_fixtures",)

TINY = VIDEOMAE_SIZES["tiny"]


def test_vit_b_has_the_reference_shapes_and_parameter_count():
    with torch.device("meta"):
        model = VideoMAE(VIDEOMAE_SIZES["base"])
    c = model.config
    assert c.grid == (8, 14, 14) and c.num_tokens == 1568 and c.cube_values == 1536
    assert model.head.out_features == 1536 and model.encoder_to_decoder.bias is None
    assert len(model.encoder.blocks) == 12 and len(model.decoder.blocks) == 4
    assert model.decoder.blocks[0].ln_1.eps == 1e-6 and model.patch_embed.proj.bias is not None
    # VideoMAE's ViT-B pretraining model: 86.2M in the encoder (with the patch embedding), 94.2M in all (the
    # k-projection bias, which VideoMAE leaves out, is 768 per block and does not change the function).
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("patch_embed", "encoder.")))
    total = sum(p.numel() for p in model.parameters())
    assert abs(encoder / 1e6 - 86.2) < 0.2 and abs(total / 1e6 - 94.2) < 0.3, (encoder, total)


def test_sincos_table_follows_the_formula():
    table = sincos_table(50, 8)
    i, j = 7, 5  # odd channel: cos
    assert table[i, j] == pytest.approx(math.cos(i / 10000 ** (2 * (j // 2) / 8)), abs=1e-6)
    assert table[i, 4] == pytest.approx(math.sin(i / 10000 ** (4 / 8)), abs=1e-6)


def test_tube_mask_hides_the_same_positions_at_every_time_step():
    g = torch.Generator().manual_seed(0)
    mask = tube_mask(5, (8, 14, 14), 0.9, generator=g)
    assert mask.shape == (5, 1568) and mask.dtype == torch.bool
    frames = mask.reshape(5, 8, 196)
    assert (frames == frames[:, :1]).all()  # a tube
    assert (frames[:, 0].sum(dim=1) == 176).all() and ((~mask).sum(dim=1) == 160).all()
    assert not torch.equal(frames[0, 0], frames[1, 0])  # drawn per clip
    again = tube_mask(5, (8, 14, 14), 0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    with pytest.raises(ValueError, match="no visible"):
        tube_mask(1, (1, 2, 2), 1.0)


def test_running_cell_decodes_half_of_each_frame_in_a_rotating_pattern():
    mask = running_cell_mask(3, (8, 14, 14), generator=torch.Generator().manual_seed(1))
    assert mask.shape == (3, 1568) and ((~mask).sum(dim=1) == 784).all()  # decoder length 160 + 784 = 944 in V2
    cells = mask.reshape(3, 8, 7, 2, 7, 2).permute(0, 1, 2, 4, 3, 5).reshape(3, 8, 49, 4)
    assert (cells.sum(dim=-1) == 2).all()  # every 2×2 cell: two decoded, two not
    assert (cells == cells[:, :, :1]).all()  # the same pattern tiled over the frame
    for t in range(7):  # shifted by one place per time step
        assert torch.equal(cells[:, t + 1, 0], cells[:, t, 0].roll(1, dims=-1))
    per_position = (~mask).reshape(3, 8, 196).sum(dim=1)
    assert (per_position == 4).all()  # each position decoded in 4 of the 8 time steps


def test_cube_targets_normalise_each_cube_per_channel_channel_fastest():
    video = torch.rand(2, 3, 4, 32, 32) * 255
    targets = cube_targets(video, tubelet=2, patch=16)
    assert targets.shape == (2, 2 * 2 * 2, 1536)
    # Cube 3 of clip 1: time slot 0, row 1, column 1 (frame-major, then rows, then columns).
    cube = video[1, :, 0:2, 16:32, 16:32].reshape(3, -1)  # (channel, 512 pixels in t, y, x order)
    expected = (cube - cube.mean(dim=1, keepdim=True)) / (cube.std(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(targets[1, 3], expected.t().reshape(-1), rtol=1e-4, atol=1e-4)


def test_the_encoder_never_sees_masked_cubes_and_the_loss_counts_only_them():
    torch.manual_seed(0)
    model = VideoMAE(TINY).eval()
    B = 2
    video = torch.randn(B, 3, 4, 32, 32)
    mask = tube_mask(B, TINY.grid, 0.75)
    hidden = mask.reshape(B, 2, 4, 4)  # (time slots, rows, columns) of 2 × 8 × 8 cubes
    changed = video.clone()
    for b, t, y, x in hidden.nonzero().tolist():
        changed[b, :, 2 * t : 2 * t + 2, 8 * y : 8 * y + 8, 8 * x : 8 * x + 8] = 99.0
    torch.testing.assert_close(model.encode(video, mask), model.encode(changed, mask))

    # V1 decodes every hidden position; V2's running cell half of each frame, counting only hidden ones.
    full = model(video, mask)
    assert full.pred.shape == (B, int(mask[0].sum()), TINY.cube_values) and full.counts.all()
    cell = running_cell_mask(B, TINY.grid)
    half = model(video, mask, cell)
    assert half.pred.shape[1] == TINY.num_tokens // 2
    torch.testing.assert_close(half.counts, mask.gather(1, half.positions))
    assert not (~cell).gather(1, half.positions).logical_not().any()  # only decoded positions come back

    targets = cube_targets(video, TINY.tubelet_size, TINY.patch_size)
    loss = reconstruction_loss(half, targets)
    index = half.positions[..., None].expand(-1, -1, targets.shape[-1])
    by_hand = ((half.pred - targets.gather(1, index)) ** 2).mean(-1)[half.counts].mean()
    torch.testing.assert_close(loss, by_hand)


def test_a_few_steps_learn_to_reconstruct_one_clip():
    torch.manual_seed(0)
    model = VideoMAE(TINY)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = tube_mask(2, TINY.grid, 0.75, generator=torch.Generator().manual_seed(0))
    targets = cube_targets(video, TINY.tubelet_size, TINY.patch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = reconstruction_loss(model(video, mask), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses[::10]  # a fixed clip and mask: memorised steadily


def _kinetics_list(chunks: Path, path: Path) -> Path:
    """A Kinetics-style list (AVION's 'path num_frames label') over the chunked sample's videos."""
    manifest = pd.read_csv(chunks / "manifest.csv")
    frames = manifest.groupby("video").frames.sum()
    lines = [f"{video} {count} {label % 3}" for label, (video, count) in enumerate(frames.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_videomae_runs_resumes_and_records_its_model(small_sample, chunked_sample, tmp_path):
    from avtool.train import videomae
    from avtool.train.checkpoint import latest_checkpoint, load_checkpoint
    from avtool.train.config import RunConfig
    from avtool.train.model_factory import model_from_config_dict

    train_list = _kinetics_list(chunked_sample, tmp_path / "train.txt")

    def config(out: Path, **run: object) -> videomae.VideoMAETrainConfig:
        fields = dict(output_dir=out, epochs=2, batch_size=2, workers=0, log_every=1, save_every=100, seed=1)
        return videomae.VideoMAETrainConfig(chunked_sample, train_list, size="tiny", grad_checkpointing=False,
                                            mask_ratio=0.75, decoder_mask="running-cell",
                                            run=RunConfig(**{**fields, **run}))  # fmt: skip

    full = videomae.run(config(tmp_path / "full"))
    steps = full.state.step
    assert steps >= 4 and full.state.epoch == 2
    records = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    checkpoint = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    model = model_from_config_dict(checkpoint["model_config"])
    assert isinstance(model, VideoMAE) and model.config.width == TINY.width
    model.load_state_dict(checkpoint["model"])
    # The masks come from the step's seed: a run stopped and resumed ends with the same weights.
    videomae.run(config(tmp_path / "resumed", stop_after=steps // 2 + 1))
    videomae.run(config(tmp_path / "resumed"))
    resumed = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))["model"]
    for name, value in checkpoint["model"].items():
        torch.testing.assert_close(value, resumed[name], msg=name)
    # Repeated sampling: a step trains on N views of each decoded clip; the schedule counts videos.
    repeated = videomae.run(replace(config(tmp_path / "repeated", stop_after=2), repeated_sampling=2))
    assert repeated.state.step == 2
    last = [json.loads(x) for x in (tmp_path / "repeated/metrics.jsonl").read_text().splitlines()][-1]
    assert last["views_per_s"] == pytest.approx(2 * last["videos_per_s"])


def test_train_videomae_checks_its_settings_in_one_line(chunked_sample, tmp_path):
    from avtool.errors import AvtoolError
    from avtool.train import videomae

    train_list = _kinetics_list(chunked_sample, tmp_path / "train.txt")
    bad = videomae.VideoMAETrainConfig(chunked_sample, train_list, size="tiny", mask_ratio=1.0,
                                       decoder_mask="running-cell", decoder_mask_ratio=0.3)  # fmt: skip
    with pytest.raises(AvtoolError, match=r"mask_ratio=1.0 is outside.*decoder_mask_ratio=0.3"):
        videomae.run(bad)


def test_lion_takes_the_hand_computed_step_and_the_mask_token_is_not_decayed():
    from avtool.train.config import OptimConfig
    from avtool.train.optim import Lion, build_optimizer, parameter_groups

    assert isinstance(build_optimizer(VideoMAE(TINY), OptimConfig(optimizer="lion"), torch.device("cpu")), Lion)
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    lion = Lion([param], lr=0.1, betas=(0.9, 0.99), weight_decay=0.05)
    momentum = torch.tensor([0.3, 0.0, -1.0])
    lion.state[param]["exp_avg"] = momentum.clone()
    param.grad = torch.tensor([-1.0, 2.0, 5.0])
    expected = param.detach() * (1 - 0.1 * 0.05) - 0.1 * torch.sign(0.9 * momentum + 0.1 * param.grad)
    lion.step()
    torch.testing.assert_close(param.detach(), expected)
    torch.testing.assert_close(lion.state[param]["exp_avg"], 0.99 * momentum + 0.01 * param.grad)

    model = VideoMAE(TINY)
    decayed, undecayed = parameter_groups(model, 0.05)
    assert any(p is model.mask_token for p in undecayed["params"])
    assert not any(p is model.mask_token for p in decayed["params"])
    assert all(p.ndim >= 2 for p in decayed["params"])


def test_layer_decay_scales_each_block_below_the_head():
    from avtool.train.config import OptimConfig
    from avtool.train.model_factory import ModelConfig, build_classifier
    from avtool.train.optim import build_optimizer, layer_scales, set_lr

    model = build_classifier(ModelConfig(name="tiny", num_frames=2, grad_checkpointing=False, fast_conv1=False), 5, 0.0)
    n = len(model.video.transformer.blocks)
    scales = layer_scales(model, 0.75)
    assert scales["head.weight"] == scales["video.ln_post.weight"] == 1.0
    for i in range(n):
        assert scales[f"video.transformer.blocks.{i}.attn.qkv.weight"] == pytest.approx(0.75 ** (n - i))
    for name in ("video.patch_embed.proj.weight", "video.positional_embedding", "video.class_embedding",
                 "video.ln_pre.weight"):  # fmt: skip
        assert scales[name] == pytest.approx(0.75 ** (n + 1)), name
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, layer_decay=0.75), torch.device("cpu"))
    set_lr(optimizer, 1e-3)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert rate[id(params["video.transformer.blocks.0.mlp.c_fc.weight"])] == pytest.approx(1e-3 * 0.75**n)
    assert rate[id(params["head.weight"])] == pytest.approx(1e-3)
    assert decay[id(params["video.transformer.blocks.0.mlp.c_fc.bias"])] == 0.0  # still no decay on biases
    assert decay[id(params["video.transformer.blocks.0.mlp.c_fc.weight"])] > 0
    plain = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    assert len(plain.param_groups) == 2  # off: the two groups of before (checkpoints resume)
