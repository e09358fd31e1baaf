"""`avtool train lavila|mir|cls|videomae|kinetics` and `avtool eval mir|cls|kinetics`: commands built from the
jobs' configs (``avtool.cli.commands``), which train in this process or in torchrun's workers (--nproc-per-node)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from avtool.cli.commands import Compat, config_command, lazy_group
from avtool.cli.console import console

if TYPE_CHECKING:
    from avtool.train.engine import FitResult
    from avtool.train.launch import LaunchConfig
    from avtool.train.run_eval import EvalConfig

# Flags of AVION's scripts that name what avtool does anyway; accepted so that its model-zoo commands run.
AVION_COMPAT = (
    Compat("--use-multi-epochs-loader", "Always on: the loader's workers run on across epochs."),
    Compat("--video-chunk-length", "Ignored: each video's chunk starts are read from its chunk files.", True),
)


def _start(job: str, cfg: Any, launch: LaunchConfig) -> None:
    """Check the config here (one-line errors before any worker starts), then train here or in torchrun."""
    from avtool.train import cls, kinetics, lavila, mir, videomae
    from avtool.train.config import raise_problems
    from avtool.train.engine import check_datasets
    from avtool.train.launch import check_gpus
    from avtool.train.launch import launch as launch_workers

    module, job_class = {
        "lavila": (lavila, lavila.LavilaJob), "mir": (mir, mir.MIRJob), "cls": (cls, cls.CLSJob),
        "videomae": (videomae, videomae.VideoMAEJob), "kinetics": (kinetics, kinetics.KineticsJob),
    }[job]  # fmt: skip
    raise_problems(f"train {job}", launch.problems())
    cfg.check()
    if launch.needed():
        check_gpus(launch.nproc_per_node, cfg.run.device)
        # Loading the metadata here reports a bad file once, in one line, instead of once per worker.
        with console.status("checking the metadata ..."):
            check_datasets(job_class(cfg))
        console.print(
            f"launching {launch.nproc_per_node} process(es) per node on {launch.nnodes} node(s) with torchrun"
        )
        launch_workers(launch, sys.argv[1:])
        return
    _summary(module.run(cfg, console), job, cfg)


def learning_line(job: str, cfg: Any, output_dir: Path) -> str | None:
    """One line saying whether the run learned: the validation metric at the first and the last evaluation of
    ``output_dir/metrics.jsonl`` and, for retrieval, the chance level of the same clips."""
    from avtool.data import EK100MIR, ClipConfig
    from avtool.train.metrics import chance_retrieval_metrics

    path = Path(output_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    evals = [r for r in records if r.get("type") == "eval"]
    metric = {"lavila": "mAP_avg", "mir": "mAP_avg", "kinetics": "top1"}.get(job, "action_top1")
    if len(evals) < 2 or metric not in evals[0]:
        return None
    before, after = evals[0][metric], evals[-1][metric]
    line = f"{metric} at step {evals[0]['step']}: {before:.2f}, at step {evals[-1]['step']}: {after:.2f}"
    if job == "kinetics":
        from avtool.train.evaluate import majority_label_accuracy
        from avtool.train.kinetics import KineticsJob

        kinetics = KineticsJob(cfg)
        held_out = kinetics.eval_dataset()
        if held_out is not None:
            majority = majority_label_accuracy(kinetics.train_dataset().labels, held_out.labels)
            line += f"; majority class {majority:.2f} on these {len(held_out)} videos"
    if job in ("lavila", "mir") and cfg.ek100 is not None:
        clips = ClipConfig(root=cfg.ek100.root, num_frames=1, size=8, train=False)
        dataset = EK100MIR(cfg.ek100.mir_config("test", clips))
        chance = chance_retrieval_metrics(dataset.relevancy).to_dict()["mAP_avg"]
        line += f"; chance {chance:.2f} on these {dataset.relevancy.shape[0]} test clips"
    return ("learned: " if after > before else "did not learn: ") + line


def _summary(result: FitResult, job: str, cfg: Any) -> None:
    import os

    if int(os.environ.get("RANK", 0)) != 0:
        return
    table = Table(title="Training summary", title_justify="left", show_header=False)
    state = result.state
    table.add_row("steps", f"{state.step} ({state.epoch} epochs done)")
    train = result.last_train
    if train:
        table.add_row("last loss", f"{train['loss']:.4f}")
        table.add_row("videos/s", f"{train['videos_per_s']:.1f} ({train['videos_per_s_per_gpu']:.1f} per GPU)")
        table.add_row("data wait", f"{train['data_time']:.3f} s/step ({100 * train['data_wait_fraction']:.0f}%)")
        if "peak_memory_gb" in train:
            table.add_row("peak memory", f"{train['peak_memory_gb']:.2f} GB")
    if result.last_eval:
        table.add_row("last eval", ", ".join(f"{k} {v:.2f}" for k, v in result.last_eval.items()))
    if state.best is not None:
        table.add_row("best", f"{state.best:.2f}")
    if state.bad_clips:
        table.add_row("bad clips", f"{state.bad_clips} unreadable clip(s) replaced by other samples (metrics.jsonl)")
    table.add_row("output", str(result.output_dir))
    console.print(table)
    if line := learning_line(job, cfg, result.output_dir):
        console.print(line, highlight=False)
    if result.interrupted:
        raise typer.Exit(130)


def _lavila(app: typer.Typer) -> None:
    from avtool.train.launch import LaunchConfig
    from avtool.train.lavila import LavilaConfig

    config_command(
        app, "lavila", LavilaConfig, lambda cfg, launch: _start("lavila", cfg, launch),
        extras={"launch": LaunchConfig}, compat=AVION_COMPAT,
        help="""Contrastive video-text pretraining of the dual encoder on Ego4D narrations (§5, B.1).

        Defaults are the paper's ViT-B recipe: 4 frames, 256 clips per GPU, AdamW at a fixed 3e-5, weight decay
        0.01, 5 epochs, frozen temperature, checkpointing, Fused DecodeCrop. With --ek100-root and
        --ek100-annotations, zero-shot EK-100 MIR is evaluated after every epoch and the best checkpoint kept.""",
    )  # fmt: skip


def _mir(app: typer.Typer) -> None:
    from avtool.train.launch import LaunchConfig
    from avtool.train.mir import MIRConfig

    config_command(
        app, "mir", MIRConfig, lambda cfg, launch: _start("mir", cfg, launch),
        extras={"launch": LaunchConfig}, compat=AVION_COMPAT,
        help="""Fine-tune a pretrained dual encoder on EK-100 multi-instance retrieval (B.2).

        Max-margin ranking loss (margin 0.2) over the global batch, 16 frames, 64 clips per GPU, 100 epochs,
        AdamW warming up from 1e-6 to 3e-5 in the first epoch, then a cosine down to 1e-5, drop path 0.1; mAP
        and nDCG on the test split after every epoch.""",
    )  # fmt: skip


def _cls(app: typer.Typer) -> None:
    from avtool.train.cls import CLSConfig
    from avtool.train.launch import LaunchConfig

    config_command(
        app, "cls", CLSConfig, lambda cfg, launch: _start("cls", cfg, launch),
        extras={"launch": LaunchConfig}, compat=AVION_COMPAT,
        help="""Fine-tune the video tower with a verb:noun action head on EK-100 action recognition (B.3).

        SGD (momentum 0.9, weight decay 5e-4) at 3e-3 × global batch / 128 (0.012 at 8×64), warm-up then
        cosine, label smoothing 0.1, Mixup 0.8 / CutMix 1.0, dropout 0.5, drop path 0.1, flips; verb, noun
        and action top-1 on the validation split after every epoch (verbs and nouns from the action
        marginals).""",
    )  # fmt: skip


def _videomae(app: typer.Typer) -> None:
    from avtool.train.launch import LaunchConfig
    from avtool.train.videomae import VideoMAETrainConfig

    config_command(
        app, "videomae", VideoMAETrainConfig, lambda cfg, launch: _start("videomae", cfg, launch),
        extras={"launch": LaunchConfig},
        help="""Masked-autoencoder pretraining of a video ViT on Kinetics-style clips (§5.5, VideoMAE).

        Defaults are AVION's ViT-B recipe: 16 frames at stride 4 (jittered), the multi-scale crop and flips
        fused into decoding, tube masks of ratio 0.9, a 4-block decoder, normalised-pixel targets; AdamW at
        1.5e-4 × global batch / 256, betas (0.9, 0.95), weight decay 0.05, 800 epochs with 40 of warm-up,
        then cosine; 64 clips per GPU. --decoder-mask running-cell adds VideoMAE V2's decoder masking.""",
    )  # fmt: skip


def _kinetics(app: typer.Typer) -> None:
    from avtool.train.kinetics import KineticsFinetuneConfig
    from avtool.train.launch import LaunchConfig

    config_command(
        app, "kinetics", KineticsFinetuneConfig, lambda cfg, launch: _start("kinetics", cfg, launch),
        extras={"launch": LaunchConfig},
        help="""Fine-tune a VideoMAE encoder on Kinetics-style action classes (AVION's recipe).

        From a `train videomae` checkpoint (--pretrained-checkpoint) or from scratch: the encoder over every
        cube, mean pooling, a final norm and a linear head; AdamW at 1.5e-3 × global batch / 256, layer
        decay 0.75, weight decay 0.05, drop path 0.1, 100 epochs with 5 of warm-up, then cosine; Mixup 0.8 /
        CutMix 1.0 with label smoothing 0.1, RandomResizedCrop (0.08-1) and flips fused into decoding,
        RandAugment (m7, n4) and random erasing (0.25) per clip. Top-1/top-5 on --val-list after every
        epoch, one centre view per video; `avtool eval kinetics` tests 5 clips × 3 crops.""",
    )  # fmt: skip


def _evaluate(cfg: EvalConfig, task: str) -> None:
    from avtool.train.run_eval import evaluate_checkpoint

    cfg = dataclasses.replace(cfg, task=task)
    _print_evaluation(evaluate_checkpoint(cfg), cfg.result_path)


def _print_evaluation(result: dict[str, Any], path: Path) -> None:
    from avtool.atomic import atomic_write_text

    table = Table(title=result["title"], title_justify="left")
    for column in ("metric", "model", result["baseline_name"]):
        table.add_column(column)
    for name, value in result["metrics"].items():
        baseline = result["baseline"].get(name)
        table.add_row(name, f"{value:.2f}", "" if baseline is None else f"{baseline:.2f}")
    console.print(table)
    console.print(result["counts"], highlight=False)
    atomic_write_text(path, json.dumps(result, indent=2))
    console.print(f"wrote {path}", highlight=False)


def _eval_kinetics(app: typer.Typer) -> None:
    from avtool.train.eval_kinetics import KineticsEvalConfig, evaluate_kinetics_checkpoint

    config_command(
        app, "kinetics", KineticsEvalConfig, lambda cfg: _print_evaluation(evaluate_kinetics_checkpoint(cfg),
                                                                           cfg.result_path),
        help="""Kinetics-style action classification: top-1 and top-5 over several views per video.

        VideoMAE's test: 5 clips spread over each video × 3 crops along its long side, the softmax
        averaged over the 15 views; with the video and view counts, and the training list's majority
        class for comparison.""",
    )  # fmt: skip


def _eval_mir(app: typer.Typer) -> None:
    from avtool.train.run_eval import EvalConfig

    config_command(
        app, "mir", EvalConfig, lambda cfg: _evaluate(cfg, "mir"),
        help="""EK-100 multi-instance retrieval: mAP and nDCG, V→T, T→V and their average.

        With the clip and sentence counts (test split: 9,668 clips × 3,842 sentences) and chance level for
        comparison.""",
    )  # fmt: skip


def _eval_cls(app: typer.Typer) -> None:
    from avtool.train.run_eval import EvalConfig

    config_command(
        app, "cls", EvalConfig, lambda cfg: _evaluate(cfg, "cls"),
        help="""EK-100 action recognition: verb, noun and action top-1.

        Verbs and nouns from the marginals of the action softmax, with the clip count; the training set's
        majority class for comparison.""",
    )  # fmt: skip


train_app = typer.Typer(
    help="Pretrain (LaViLa dual encoder on Ego4D, VideoMAE on Kinetics-style clips) and fine-tune (EK-100 MIR, "
    "CLS; Kinetics classes) on one GPU to many nodes.",
    no_args_is_help=True,
    cls=lazy_group({"lavila": _lavila, "mir": _mir, "cls": _cls, "videomae": _videomae, "kinetics": _kinetics}),
)  # fmt: skip
eval_app = typer.Typer(
    help="Evaluate a checkpoint on EK-100 MIR (mAP, nDCG) or CLS (top-1), or on Kinetics-style classes (top-1/5).",
    no_args_is_help=True, cls=lazy_group({"mir": _eval_mir, "cls": _eval_cls, "kinetics": _eval_kinetics}),
)  # fmt: skip
