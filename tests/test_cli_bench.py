"""`avtool bench memory` and `avtool bench model` on tiny towers (CPU, seconds), their help and their errors."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from avtool.cli import app
from avtool.errors import AvtoolError
from avtool.models import VideoTowerConfig

runner = CliRunner()
TINY_MODEL = ["bench", "model", "--tiny", "--arch", "vit", "--batch-size", "2", "--warmup-steps", "1", "--steps", "1"]


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_memory_bench_writes_a_row_per_variant(tmp_path):
    result = runner.invoke(app, ["bench", "memory", "--tiny", "--frames", "4", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "memory.csv")
    assert rows["variant"].tolist() == ["baseline", "flash-attn", "grad-ckpt"]
    assert (rows["num_frames"] == 4).all() and (rows["width"] == 64).all()  # --frames overrides --tiny's 2
    parts = rows[["layernorm_mb", "mha_mb", "mlp_mb", "other_mb"]].sum(axis=1)
    assert parts.to_numpy() == pytest.approx(rows["saved_total_mb"].to_numpy(), abs=0.002)
    record = json.loads((tmp_path / "memory.json").read_text())
    assert record["config"]["tower"]["num_frames"] == 4 and record["config"]["precision"] == "bf16"
    assert "torch" in record["env"]
    assert "grad-ckpt" in result.output and "memory.csv" in result.output
    # The result JSON is a config file: it reproduces the run that wrote it.
    assert _resolved("bench", "memory", "--config", str(tmp_path / "memory.json")) == record["config"]


def test_model_bench_with_partial_checkpointing_and_mfu(tmp_path):
    args = [*TINY_MODEL, "--layers", "3", "--ckpt-blocks", "1", "--ckpt-keep-attention", "1", "--peak-tflops", "0.5",
            "--low-precision-residual", "--output", str(tmp_path)]  # fmt: skip
    result = runner.invoke(app, [*args, "--name", "tiny"])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "tiny.csv").set_index("variant")
    assert list(rows.index) == ["baseline", "flash-attn", "grad-ckpt"]
    assert rows.loc["grad-ckpt", "ckpt_blocks"] == 1 and rows.loc["flash-attn", "ckpt_blocks"] == 0
    assert not rows["compiled"].any() and (rows["layers"] == 3).all()
    assert (rows["fused_optimizer"] == (rows["device"] != "cpu")).all()  # training's AdamW: fused on CUDA only
    assert not rows["fused_mlp"].any()
    # MFU is the model FLOP rate over the given peak; HFU also counts the recomputed block.
    assert rows["mfu"].to_numpy() == pytest.approx((rows["tflops"] / 0.5).to_numpy(), rel=0.02)
    assert rows.loc["grad-ckpt", "hfu"] > rows.loc["grad-ckpt", "mfu"]
    assert rows.loc["baseline", "hfu"] == rows.loc["baseline", "mfu"]
    assert rows.loc["grad-ckpt", "ckpt_keep_attention"] == 1 and rows.loc["flash-attn", "ckpt_keep_attention"] == 0
    config = json.loads((tmp_path / "tiny.json").read_text())["config"]
    assert config["ckpt_blocks"] == 1 and config["batch_size"] == 2 and config["precision"] == "bf16"
    assert config["model"]["video"]["low_precision_residual"] and config["model"]["text"]["low_precision_residual"]
    assert "1/3, 1 keep attn" in result.output  # the table shows checkpointed/total blocks


def _resolved(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--print-config"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_defaults_are_the_papers_setting():
    tower = _resolved("bench", "memory")["tower"]  # ViT-B/16, 224², 4 frames, 1×16×16, fast conv1 as in training
    assert (tower["width"], tower["layers"], tower["image_size"], tower["num_frames"], tower["patch_size"]) == (
        768, 12, 224, 4, 16)  # fmt: skip
    assert tower["fast_conv1"] and _resolved("bench", "model")["model"]["video"]["fast_conv1"]
    # --tiny changes the sizes only; a size flag still overrides it, and a per-tower flag reaches both towers.
    tiny = _resolved("bench", "model", "--tiny", "--width", "96", "--fused-mlp")["model"]
    assert tiny["video"]["width"] == 96 and tiny["video"]["layers"] == VideoTowerConfig.tiny().layers
    assert tiny["video"]["fused_mlp"] and tiny["text"]["fused_mlp"] and tiny["video"]["fast_conv1"]
    assert _resolved("bench", "decode", "r", "--tiny", "--procs", "1,3")["procs"] == [1, 3]


@pytest.mark.parametrize("command", [("bench", "memory"), ("bench", "model")])
def test_help_explains_every_option_with_its_unit(command):
    text = _help(*command)
    for option, unit in [
        ("--image-size", "pixels"), ("--frames", "Frames per clip"), ("--patch-size", "pixels"),
        ("--tubelet", "frames"), ("--width", "channels"), ("--layers", "blocks"), ("--heads", "heads"),
        ("--variant", "repeatable"), ("--attn", "cudnn"), ("--precision", "fp16"), ("--device", "cuda"),
        ("--output", "Folder"), ("--tiny", "CPU"), ("224 pixels; --tiny: 32", ""), ("768: ViT-B", ""),
    ]:  # fmt: skip
        assert option in text and unit in text, option
    if command[1] == "memory":
        assert "--batch-sizes" in text and "videos" in text and "10^6 bytes" in text
    else:
        for option, unit in [
            ("--batch-size", "batch per step"), ("--max-batch-size", "videos"), ("--granularity", "videos"),
            ("--memory-limit-gb", "GB"), ("--ckpt-blocks", "first k"), ("--compile", "torch.compile"),
            ("--fast-conv1", "matmul"), ("--warmup-steps", "steps"), ("--steps", "steps"),
            ("--peak-tflops", "TFLOP/s"), ("[default: bf16]", ""), ("--low-precision-residual", "residual"),
        ]:  # fmt: skip
            assert option in text and unit in text, option


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bench", "memory", "--tiny", "--heads", "5"], "heads=5"),
        (["bench", "memory", "--tiny", "--variant", "fast", "--batch-sizes", "4", "2"], "'fast'"),
        ([*TINY_MODEL, "--ckpt-blocks", "7"], "ckpt_blocks=7"),
        ([*TINY_MODEL, "--ckpt-blocks", "lots"], "--ckpt-blocks"),
        ([*TINY_MODEL, "--ckpt-blocks", "auto", "--device", "cpu"], "needs CUDA"),
        (["bench", "model", "--compile", "--device", "cpu"], "compile needs a fixed batch_size"),
    ],
)
def test_invalid_configs_are_one_line_errors(args, expected):
    result = runner.invoke(app, args)
    assert isinstance(result.exception, AvtoolError), result.output
    message = str(result.exception)
    assert expected in message and "\n" not in message


def test_error_reaches_the_user_as_one_line_with_status_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "avtool.cli", "bench", "memory", "--tiny", "--heads", "5", "--batch-sizes", "3", "2",
         "--output", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "heads=5" in result.stderr and "batch_sizes" not in result.stderr  # the tower is checked first
    assert not list(tmp_path.iterdir())
