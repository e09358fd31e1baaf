"""The command line as a product: usage mistakes are one line through the installed console script, every
--help reads at 80 columns, config files round-trip, AVION's model-zoo commands resolve to the paper's
settings, and the Python API and the CLI agree on every job's defaults."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from avtool.bench.decode import DecodeBenchConfig
from avtool.bench.io import IoBenchConfig
from avtool.bench.memory import MemoryBenchConfig
from avtool.bench.model import ModelBenchConfig
from avtool.cli import app
from avtool.options import build, config_json
from avtool.prep.chunk import ChunkConfig
from avtool.train.cls import CLSConfig
from avtool.train.lavila import LavilaConfig
from avtool.train.mir import MIRConfig
from avtool.train.run_eval import EvalConfig

AVTOOL = shutil.which("avtool", path=str(Path(sys.executable).parent)) or "avtool"
runner = CliRunner()


def _avtool(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([AVTOOL, *args], capture_output=True, text=True, **kwargs)


def _print_config(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--print-config"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- usage errors: one line on stderr, exit status 2, the flag named ----

USAGE_ERRORS = [
    (["chunk"], "SRC"),
    (["chunk", "a", "b", "--crf", "x"], "--crf"),
    (["sample"], "DEST"),
    (["bench", "memory", "--frames", "abc"], "--frames"),
    (["bench", "model", "--precision", "bf17"], "--precision"),
    (["bench", "io"], "PATH"),
    (["bench", "decode", "r", "--videos", "many"], "--videos"),
    (["train", "lavila", "r", "m", "--fix-lr", "3"], "3"),
    (["train", "lavila", "r", "m", "--batch-size", "big"], "--batch-size"),
    (["train", "lavila", "r"], "METADATA"),
    (["train", "mir", "a", "b", "--attn", "fast"], "--attn"),
    (["train", "cls", "a", "b", "--lrr", "1"], "--lrr"),
    (["eval", "mir"], "CHECKPOINT"),
    (["eval", "cls", "c", "a", "b", "--precision", "fp8"], "--precision"),
    (["plot", "fig5"], "RESULTS"),
    (["nonsense"], "nonsense"),
    (["train", "lavila", "r", "m", "--config", "missing.yaml"], "missing.yaml"),
]


@pytest.mark.parametrize(("args", "named"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_mistakes_are_one_line_with_exit_status_2(args, named, tmp_path, monkeypatch, avtool_main):
    monkeypatch.chdir(tmp_path)
    result = avtool_main(*args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:"), result.stderr
    assert named in result.stderr


def test_a_usage_mistake_in_a_real_process_is_one_line(tmp_path):
    result = _avtool("train", "lavila", "r", "m", "--batch-size", "big", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:") and "--batch-size" in result.stderr


def test_version_and_short_help():
    version = _avtool("--version")
    assert version.returncode == 0 and version.stdout.startswith("avtool ")
    short = _avtool("train", "-h")
    assert short.returncode == 0 and "lavila" in short.stdout


# ---- help at 80 columns ----


def _commands(command, path=()):
    """Every command under ``command``, the lazily built ones too (through the group's own lookup)."""
    yield path, command
    if hasattr(command, "list_commands"):
        ctx = typer.Context(command)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name))


@pytest.mark.parametrize("path", [p for p, _ in _commands(get_command(app))], ids=lambda p: " ".join(p) or "avtool")
def test_every_help_names_every_flag_in_full_at_80_columns(path):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.output
    command = dict(_commands(get_command(app)))[path]
    words = set(result.output.replace(",", " ").replace("/", " ").split())
    for param in command.params:
        for flag in [*param.opts, *param.secondary_opts]:
            if flag.startswith("-"):
                assert flag in words, f"{flag} cut or missing in `{' '.join(path)} --help`"


def test_help_prints_brackets_and_units():
    text = runner.invoke(app, ["train", "lavila", "--help"], env={"COLUMNS": "80"}).output
    assert "'avtool[fa4]'" in " ".join(text.split())
    assert "[default: 256 clips]" in " ".join(text.split())


# ---- config files ----


def test_config_file_round_trip_in_every_format(tmp_path):
    import tomllib  # noqa: F401  (Python ≥ 3.11 here; avtool falls back to tomli on 3.10)
    import yaml

    args = ["train", "lavila", "r", "m.pkl", "--batch-size", "32", "--no-grad-ckpt", "--lr", "1e-4",
            "--metadata-aux", "a.pkl", "--metadata-aux", "b.pkl", "--stop-after", "7"]  # fmt: skip
    resolved = _print_config(*args)
    assert resolved["run"]["batch_size"] == 32 and resolved["model"]["grad_checkpointing"] is False
    assert resolved["metadata_aux"] == ["a.pkl", "b.pkl"] and resolved["run"]["stop_after"] == 7
    (tmp_path / "c.json").write_text(json.dumps(resolved))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(resolved))
    toml_lines = []  # a hand-written TOML of the settings that differ from the defaults, as a user would write
    toml_lines += [
        'root = "r"',
        'metadata = "m.pkl"',
        'metadata_aux = ["a.pkl", "b.pkl"]',
        "[run]",
        "batch_size = 32",
        "stop_after = 7",
        "[model]",
        "grad_checkpointing = false",
        "[optim]",
        "lr = 1e-4",
    ]
    (tmp_path / "c.toml").write_text("\n".join(toml_lines))
    for name in ("c.json", "c.yaml", "c.toml"):
        assert _print_config("train", "lavila", "--config", str(tmp_path / name)) == resolved, name
    # Flags override the file; a flag's name works as a top-level key of a file too.
    again = _print_config("train", "lavila", "--config", str(tmp_path / "c.yaml"), "--epochs", "2")
    assert again["run"]["epochs"] == 2 and again["run"]["batch_size"] == 32
    (tmp_path / "flat.yaml").write_text("root: r\nmetadata: m.pkl\nbatch-size: 48\nfix_lr: false\n")
    flat = _print_config("train", "lavila", "--config", str(tmp_path / "flat.yaml"))
    assert flat["run"]["batch_size"] == 48 and flat["optim"]["fixed_lr"] is False


def test_config_file_mistakes_are_one_line(tmp_path, avtool_main):
    (tmp_path / "typo.yaml").write_text("root: r\nmetadata: m\nrun:\n  epoch: 3\n")
    result = avtool_main("train", "lavila", "--config", str(tmp_path / "typo.yaml"))
    assert result.returncode == 2 and "run.epoch" in result.stderr and "run.epochs" in result.stderr
    (tmp_path / "type.yaml").write_text("root: r\nmetadata: m\nrun:\n  epochs: many\n")
    result = avtool_main("train", "lavila", "--config", str(tmp_path / "type.yaml"))
    assert result.returncode == 2 and "whole number" in result.stderr and result.stderr.count("\n") == 1
    (tmp_path / "bad.yaml").write_text("root: [unclosed\n")
    result = avtool_main("train", "lavila", "--config", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2 and "not valid YAML" in result.stderr and result.stderr.count("\n") == 1


def test_a_runs_saved_config_reproduces_its_resolved_config(small_sample, tmp_path):
    """config.json written by a real (tiny, CPU) run, fed back with --config, resolves to the same config."""
    from avtool.prep.chunk import ChunkConfig, plan_chunking, run_chunking
    from avtool.prep.encode import EncodeSettings

    chunks = tmp_path / "chunks"
    report = run_chunking(plan_chunking(ChunkConfig(src=small_sample, dst=chunks, encode=EncodeSettings(
        chunk_len=15, short_side=64, preset="ultrafast"), workers=2)))  # fmt: skip
    assert report.ok
    out = tmp_path / "run"
    args = ["train", "lavila", str(chunks / "ego4d" / "v1" / "full_scale"),
            str(small_sample / "ego4d" / "ego4d_train.pkl"), "--model", "tiny", "--frames", "2", "--no-grad-ckpt",
            "--device", "cpu", "--batch-size", "2", "--workers", "0", "--stop-after", "1",
            "--output", str(out)]  # fmt: skip
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert _print_config("train", "lavila", "--config", str(out / "config.json")) == saved
    assert _print_config(*args) == saved


# ---- AVION's spellings: the model-zoo commands with `avtool train ...` substituted ----

# From AVION's docs/MODEL_ZOO.md (../shared/reference/avion-MODEL_ZOO.md), `torchrun --nproc_per_node=8
# scripts/main_lavila_*.py` replaced by `avtool train lavila|mir|cls --nproc_per_node=8`.
ZOO_PRETRAIN = """--nproc_per_node=8 --root /new-pool/Datasets/Ego4d/v1/videos_288px_15sec/
    --root-val datasets/EK100/EK100_320p_15sec_30fps_libx264/ --use-flash-attn --grad-checkpointing
    --use-fast-conv1 --batch-size 256 --freeze-temperature --fused-decode-crop --fix-lr --output-dir EXP"""
ZOO_PRETRAIN_LLM = """--nproc_per_node=8 --root /new-pool/Datasets/Ego4d/v1/videos_288px_15sec/
    --root-val datasets/EK100/EK100_320p_15sec_30fps_libx264/
    --train-metadata datasets/Ego4D/ego4d_train.rephraser.no_punkt_top3.pkl
    --train-metadata-aux datasets/Ego4D/ego4d_train.narrator_63690737.return_10.pkl --use-flash-attn
    --grad-checkpointing --use-fast-conv1 --batch-size 256 --freeze-temperature --fused-decode-crop --fix-lr
    --output-dir EXP"""
ZOO_FINETUNE = """--nproc_per_node=8 --root datasets/EK100/EK100_320p_15sec_30fps_libx264/
    --video-chunk-length 15 --use-flash-attn --grad-checkpointing --use-fast-conv1 --batch-size 64
    --fused-decode-crop --use-multi-epochs-loader --pretrain-model experiments/pretrain_lavila_vitb/checkpoint_best.pt
    --output-dir EXP"""
PAPER_MODEL = {"attn": "sdpa", "grad_checkpointing": True, "fast_conv1": True, "name": "ViT-B-16", "embed_dim": 256}


def test_avion_pretraining_commands_resolve_to_the_papers_settings(tmp_path):
    llm = _print_config("train", "lavila", *ZOO_PRETRAIN_LLM.split())
    assert llm["root"] == "/new-pool/Datasets/Ego4d/v1/videos_288px_15sec"
    assert llm["metadata"] == "datasets/Ego4D/ego4d_train.rephraser.no_punkt_top3.pkl"
    assert llm["metadata_aux"] == ["datasets/Ego4D/ego4d_train.narrator_63690737.return_10.pkl"]
    assert llm["ek100_root"] == "datasets/EK100/EK100_320p_15sec_30fps_libx264"
    assert llm["run"]["batch_size"] == 256 and llm["run"]["epochs"] == 5 and llm["run"]["output_dir"] == "EXP"
    assert llm["optim"] == {**llm["optim"], "lr": 3e-5, "fixed_lr": True, "weight_decay": 0.01, "optimizer": "adamw"}
    assert llm["model"] == {**llm["model"], **PAPER_MODEL, "num_frames": 4, "freeze_temperature": True}
    assert llm["decoder"]["mode"] == "fused" and llm["crop_scale"] == [0.5, 1.0]
    # AVION defaults --train-metadata to its own path; avtool asks for it (and prints what it has).
    result = _avtool("train", "lavila", *ZOO_PRETRAIN.split(), "--print-config")
    assert result.returncode == 2 and "METADATA" in result.stderr and result.stderr.count("\n") == 1
    assert json.loads(result.stdout)["run"]["batch_size"] == 256


@pytest.mark.parametrize("job", ["mir", "cls"])
def test_avion_finetuning_commands_resolve_to_the_papers_settings(job):
    # AVION's scripts default the annotations to datasets/EK100/epic-kitchens-100-annotations; avtool asks for them.
    cfg = _print_config("train", job, *ZOO_FINETUNE.split(), "--ek100-annotations", "datasets/EK100/annotations")
    assert cfg["ek100_root"] == "datasets/EK100/EK100_320p_15sec_30fps_libx264"
    assert cfg["pretrained_checkpoint"] == "experiments/pretrain_lavila_vitb/checkpoint_best.pt"
    assert cfg["run"]["batch_size"] == 64 and cfg["run"]["epochs"] == 100
    assert cfg["model"] == {**cfg["model"], **PAPER_MODEL, "num_frames": 16, "drop_path": 0.1}
    assert cfg["decoder"]["mode"] == "fused"
    if job == "mir":
        assert cfg["margin"] == 0.2
        assert cfg["optim"] == {**cfg["optim"], "optimizer": "adamw", "lr": 3e-5, "lr_start": 1e-6, "lr_end": 1e-5,
                                "warmup_epochs": 1.0, "weight_decay": 0.01, "fixed_lr": False}  # fmt: skip
    else:
        assert cfg["dropout"] == 0.5 and cfg["mixup"]["mixup_alpha"] == 0.8 and cfg["mixup"]["label_smoothing"] == 0.1
        assert cfg["optim"] == {**cfg["optim"], "optimizer": "sgd", "lr": 3e-3, "lr_batch_scale": 128,
                                "momentum": 0.9, "weight_decay": 5e-4}  # fmt: skip
        assert 3e-3 * 8 * 64 / 128 == pytest.approx(0.012)  # the paper's peak at 8 GPUs × 64


def test_a_reference_flag_and_its_avtool_name_must_agree():
    result = _avtool("train", "mir", "a", "b", "--decode-mode", "decode-then-crop", "--fused-decode-crop")
    assert result.returncode == 2 and "--fused-decode-crop" in result.stderr and "--decode-mode" in result.stderr


# ---- the Python API and the CLI give the same run ----

JOBS = [
    (LavilaConfig, ["train", "lavila", "r", "m"], {"root": Path("r"), "metadata": Path("m")}),
    (MIRConfig, ["train", "mir", "r", "a"], {"ek100_root": Path("r"), "ek100_annotations": Path("a")}),
    (CLSConfig, ["train", "cls", "r", "a"], {"ek100_root": Path("r"), "ek100_annotations": Path("a")}),
    (EvalConfig, ["eval", "mir", "c", "r", "a"],
     {"checkpoint": Path("c"), "ek100_root": Path("r"), "ek100_annotations": Path("a")}),
    (MemoryBenchConfig, ["bench", "memory"], {}),
    (ModelBenchConfig, ["bench", "model"], {}),
    (IoBenchConfig, ["bench", "io", "p"], {"path": Path("p")}),
    (DecodeBenchConfig, ["bench", "decode", "r"], {"root": Path("r")}),
    (ChunkConfig, ["chunk", "s", "d"], {"src": Path("s"), "dst": Path("d")}),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "args", "required"), JOBS, ids=lambda x: x.__name__ if isinstance(x, type) else None)
def test_api_and_cli_defaults_are_equal(cls, args, required):
    api = cls(**required)
    assert _print_config(*args) == json.loads(config_json(api))
    assert build(cls, {(k,): v for k, v in required.items()}) == api
