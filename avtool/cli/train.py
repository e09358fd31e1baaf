"""`avtool train lavila|mir|cls` and `avtool eval mir|cls`: fill the job's typed config, then call its
``run`` (in this process, or in torchrun's workers with --nproc-per-node / --nnodes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from avtool.cli.console import console
from avtool.errors import AvtoolError

if TYPE_CHECKING:
    from avtool.data import EK100Layout
    from avtool.train.config import RunConfig
    from avtool.train.engine import FitResult
    from avtool.train.model_factory import ModelConfig
    from avtool.video.decode import DecoderConfig

train_app = typer.Typer(
    help="Pretrain (LaViLa dual encoder on Ego4D) and fine-tune (EK-100 MIR, CLS) on one GPU to many nodes.",
    no_args_is_help=True,
)
eval_app = typer.Typer(help="Evaluate a checkpoint on EK-100 MIR (mAP, nDCG) or CLS (top-1).", no_args_is_help=True)

# Options every job has. Defaults that differ between jobs are given in each command.
Output = Annotated[Path, typer.Option("--output", help="Folder for checkpoints, config.json and metrics.jsonl.")]
Model = Annotated[
    str, typer.Option(help="Tower shapes: an open_clip model name (ViT-B-16, ViT-L-14) or tiny (CPU smoke tests).")
]
Pretrained = Annotated[
    str | None, typer.Option(help="open_clip weights to start from: a tag (openai) or a local file; none: random.")
]
Attn = Annotated[
    str,
    typer.Option(
        help="Attention kernel: sdpa, flash, efficient, cudnn, math (baseline), flash-attn (the flash-attn "
        "package), fa4 (FlashAttention-4 for Hopper and Blackwell GPUs, the flash-attn-4 package)."
    ),
]
GradCkpt = Annotated[bool, typer.Option(help="Gradient checkpointing of every block (paper §4.1).")]
FusedMlp = Annotated[
    bool,
    typer.Option(
        help="Each MLP with its GELU in the matmuls' epilogues (quack's CuTe GEMMs, pip install 'avtool[fa4]'; "
        "Hopper/Blackwell): same maths, less memory traffic (benchmarks/README.md)."
    ),
]
CkptKeepAttention = Annotated[
    int,
    typer.Option(
        help="With checkpointing, the last k video blocks keep their attention outputs instead of recomputing "
        "the attention (ViT-B, 4 frames: 1.25 MB per clip and block; 10 gave bench model 1.04× on an H200), blocks."
    ),
]
FastConv1 = Annotated[bool, typer.Option(help="Patch embedding as one matmul (same maths as the conv).")]
PatchDropout = Annotated[float, typer.Option(help="Fraction of video patch tokens dropped in training, 0-1.")]
EmbedDim = Annotated[int, typer.Option(help="Size of the joint video-text embedding.")]
BatchSize = Annotated[int, typer.Option(help="Clips per GPU per micro-step.")]
AccumSteps = Annotated[int, typer.Option(help="Micro-batches accumulated per optimiser step.")]
Workers = Annotated[int, typer.Option(help="Data-loader worker processes per GPU (one core each).")]
Precision = Annotated[str, typer.Option(help="Autocast on CUDA: bf16, fp16 (with a gradient scaler) or fp32.")]
ClipGrad = Annotated[float | None, typer.Option(help="Clip the global gradient norm to this value; unset: none.")]
Seed = Annotated[int, typer.Option(help="Seed of weights, shuffling, frame jitter, crops and augmentation.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cuda or cpu.")]
LogEvery = Annotated[int, typer.Option(help="Optimiser steps per metrics.jsonl line.")]
SaveEvery = Annotated[int, typer.Option(help="Optimiser steps between checkpoints.")]
SaveEveryEpochs = Annotated[int, typer.Option(help="Epochs between end-of-epoch checkpoints (last and best always).")]
Keep = Annotated[int, typer.Option(help="Step checkpoints kept (the best one is kept apart).")]
Resume = Annotated[
    str, typer.Option(help="auto: continue from the latest checkpoint in --output; off: refuse to; or a checkpoint.")
]
StopAfter = Annotated[
    int | None, typer.Option(help="Stop with a checkpoint after this many optimiser steps (rerun to continue).")
]
EvalEvery = Annotated[int, typer.Option(help="Evaluate every this many epochs (0: only after the last).")]
EvalAtStart = Annotated[bool, typer.Option(help="Also evaluate the initial weights before training.")]
Compile = Annotated[bool, typer.Option(help="Run the model through torch.compile.")]
WarmupEpochs = Annotated[float, typer.Option(help="Epochs of linear warm-up from --lr-start to the peak.")]
LrStart = Annotated[float, typer.Option(help="Learning rate at the start of the warm-up.")]
LrEnd = Annotated[float, typer.Option(help="Learning rate at the end of the cosine.")]
WeightDecay = Annotated[float, typer.Option(help="Weight decay (not on biases, norms and the temperature).")]
Decoder = Annotated[str, typer.Option(help="Video decoder: pyav (CPU), pyav-nvdec (NVDEC) or decord.")]
DecodeMode = Annotated[str, typer.Option(help="fused (crop inside decoding, paper §4.2) or decode-then-crop.")]
Access = Annotated[str, typer.Option(help="seek (to the keyframe before each frame) or sequential.")]
Ek100Root = Annotated[Path | None, typer.Option(help="Chunked EK-100 videos (ROOT/P01/P01_01.MP4/0.MP4).")]
Ek100Annotations = Annotated[
    Path | None, typer.Option(help="EK-100 annotations folder (EPIC_100_*.csv, retrieval_annotations/).")
]
NprocPerNode = Annotated[int, typer.Option(help="GPUs (worker processes) per node; > 1 launches torchrun.")]
Nnodes = Annotated[int, typer.Option(help="Nodes taking part (multi-node needs --rdzv-endpoint).")]
NodeRank = Annotated[int, typer.Option(help="This node's index, 0..nnodes-1.")]
RdzvEndpoint = Annotated[str, typer.Option(help="host:port where the nodes meet (the same on every node).")]
PretrainedCheckpoint = Annotated[
    Path | None, typer.Option(help="An `avtool train lavila` checkpoint to fine-tune from.")
]


def _model(
    name: str, pretrained: str | None, frames: int, embed_dim: int, attn: str, grad_ckpt: bool, fast_conv1: bool,
    drop_path: float, patch_dropout: float, freeze_temperature: bool, ckpt_keep_attention: int, fused_mlp: bool,
) -> ModelConfig:  # fmt: skip
    from avtool.train.model_factory import ModelConfig

    pretrained = None if pretrained in (None, "", "none") else pretrained
    return ModelConfig(
        name, pretrained, frames, embed_dim, attn, grad_ckpt, fast_conv1=fast_conv1, drop_path=drop_path,
        patch_dropout=patch_dropout, freeze_temperature=freeze_temperature, ckpt_keep_attention=ckpt_keep_attention,
        fused_mlp=fused_mlp,
    )  # type: ignore[arg-type]  # fmt: skip


def _decoder(backend: str, mode: str, access: str) -> DecoderConfig:
    from avtool.video.decode import DecoderConfig

    return DecoderConfig(backend=backend, mode=mode, access=access)  # type: ignore[arg-type]


def _ek100(root: Path | None, annotations: Path | None, required: bool) -> EK100Layout | None:
    from avtool.data import EK100Layout

    if root is None and annotations is None and not required:
        return None
    if root is None or annotations is None:
        raise AvtoolError("give both --ek100-root (chunked videos) and --ek100-annotations (the annotations folder)")
    return EK100Layout(root, annotations)


def _run_config(options: dict[str, Any]) -> RunConfig:
    """The RunConfig of a command from its options of the same names (every job shares them)."""
    import dataclasses

    from avtool.train.config import RunConfig

    renamed = {"output": "output_dir", "clip_grad": "clip_grad_norm", "keep": "keep_checkpoints"}
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    values = {renamed.get(name, name): value for name, value in options.items()}
    return RunConfig(**{name: value for name, value in values.items() if name in fields})


def _start(job: str, cfg: Any, nproc_per_node: int, nnodes: int, node_rank: int, rdzv_endpoint: str) -> None:
    """Check the config here (one-line errors before any worker starts), then train here or in torchrun."""
    from avtool.train import cls, lavila, mir
    from avtool.train.config import raise_problems
    from avtool.train.launch import LaunchConfig, check_gpus, launch

    module, job_class = {"lavila": (lavila, lavila.LavilaJob), "mir": (mir, mir.MIRJob), "cls": (cls, cls.CLSJob)}[job]
    launch_cfg = LaunchConfig(nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    raise_problems(f"train {job}", launch_cfg.problems())
    cfg.check()
    if launch_cfg.needed():
        check_gpus(nproc_per_node, cfg.run.device)
        # Loading the metadata here reports a bad file once, in one line, instead of once per worker.
        with console.status("checking the metadata ..."):
            job_class(cfg).train_dataset()
        console.print(f"launching {nproc_per_node} process(es) per node on {nnodes} node(s) with torchrun")
        launch(launch_cfg, sys.argv[1:])
        return
    _summary(module.run(cfg, console))


def _summary(result: FitResult) -> None:
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
    table.add_row("output", str(result.output_dir))
    console.print(table)
    if result.interrupted:
        raise typer.Exit(130)


@train_app.command("lavila")
def train_lavila(
    root: Annotated[Path, typer.Argument(help="Chunked Ego4D videos (ROOT/<video_uid>.mp4/<start>.mp4).")],
    metadata: Annotated[Path, typer.Argument(help="LaViLa narration pickle, e.g. ego4d_train.pkl.")],
    metadata_aux: Annotated[
        list[Path] | None, typer.Option(help="LLM-augmented narration pickle(s) added as samples; repeatable.")
    ] = None,
    ek100_root: Ek100Root = None,
    ek100_annotations: Ek100Annotations = None,
    output: Output = Path("runs/lavila"),
    model: Model = "ViT-B-16",
    pretrained: Pretrained = None,
    frames: Annotated[int, typer.Option(help="Frames per clip.")] = 4,
    embed_dim: EmbedDim = 256,
    attn: Attn = "sdpa",
    grad_ckpt: GradCkpt = True,
    ckpt_keep_attention: CkptKeepAttention = 0,
    fused_mlp: FusedMlp = False,
    fast_conv1: FastConv1 = True,
    patch_dropout: PatchDropout = 0.0,
    freeze_temperature: Annotated[bool, typer.Option(help="Keep the temperature fixed at 0.07.")] = True,
    local_loss: Annotated[bool, typer.Option(help="Score local clips against the global batch only.")] = False,
    epochs: Annotated[int, typer.Option(help="Passes over the narrations.")] = 5,
    batch_size: BatchSize = 256,
    accum_steps: AccumSteps = 1,
    lr: Annotated[float, typer.Option(help="Learning rate (fixed by default, as the paper).")] = 3e-5,
    fixed_lr: Annotated[bool, typer.Option(help="Constant learning rate; else warm-up and cosine.")] = True,
    warmup_epochs: WarmupEpochs = 1.0,
    lr_start: LrStart = 1e-6,
    lr_end: LrEnd = 1e-5,
    weight_decay: WeightDecay = 0.01,
    clip_grad: ClipGrad = None,
    workers: Workers = 8,
    precision: Precision = "bf16",
    decoder: Decoder = "pyav",
    decode_mode: DecodeMode = "fused",
    access: Access = "seek",
    seed: Seed = 0,
    device: Device = "auto",
    log_every: LogEvery = 10,
    save_every: SaveEvery = 500,
    save_every_epochs: SaveEveryEpochs = 1,
    keep: Keep = 2,
    resume: Resume = "auto",
    stop_after: StopAfter = None,
    eval_every: EvalEvery = 1,
    eval_at_start: EvalAtStart = False,
    compile: Compile = False,
    nproc_per_node: NprocPerNode = 1,
    nnodes: Nnodes = 1,
    node_rank: NodeRank = 0,
    rdzv_endpoint: RdzvEndpoint = "",
) -> None:
    """Contrastive video-text pretraining of the dual encoder on Ego4D narrations (paper §5, B.1).

    Defaults are the paper's ViT-B recipe: 4 frames, 256 clips per GPU, AdamW at a fixed 3e-5, weight
    decay 0.01, 5 epochs, frozen temperature, flash attention, checkpointing, Fused DecodeCrop. With
    --ek100-root and --ek100-annotations, zero-shot EK-100 MIR is evaluated after every epoch and the
    best checkpoint kept."""
    from avtool.train.config import OptimConfig
    from avtool.train.lavila import LavilaConfig

    cfg = LavilaConfig(
        root=root, metadata=metadata, metadata_aux=tuple(metadata_aux or ()),
        ek100=_ek100(ek100_root, ek100_annotations, required=False),
        run=_run_config(locals()),
        model=_model(model, pretrained, frames, embed_dim, attn, grad_ckpt, fast_conv1, 0.0, patch_dropout,
                     freeze_temperature, ckpt_keep_attention, fused_mlp),
        optim=OptimConfig(lr=lr, fixed_lr=fixed_lr, warmup_epochs=warmup_epochs, lr_start=lr_start, lr_end=lr_end,
                          weight_decay=weight_decay),
        decoder=_decoder(decoder, decode_mode, access), local_loss=local_loss,
    )  # fmt: skip
    _start("lavila", cfg, nproc_per_node, nnodes, node_rank, rdzv_endpoint)


@train_app.command("mir")
def train_mir(
    ek100_root: Annotated[Path, typer.Argument(help="Chunked EK-100 videos (ROOT/P01/P01_01.MP4/0.MP4).")],
    ek100_annotations: Annotated[Path, typer.Argument(help="EK-100 annotations folder (retrieval_annotations/).")],
    pretrained_checkpoint: PretrainedCheckpoint = None,
    output: Output = Path("runs/mir"),
    model: Model = "ViT-B-16",
    pretrained: Pretrained = None,
    frames: Annotated[int, typer.Option(help="Frames per clip (paper: 16).")] = 16,
    embed_dim: EmbedDim = 256,
    attn: Attn = "sdpa",
    grad_ckpt: GradCkpt = True,
    ckpt_keep_attention: CkptKeepAttention = 0,
    fused_mlp: FusedMlp = False,
    fast_conv1: FastConv1 = True,
    drop_path: Annotated[float, typer.Option(help="Stochastic depth rate of the last video block.")] = 0.1,
    patch_dropout: PatchDropout = 0.0,
    margin: Annotated[float, typer.Option(help="Margin of the max-margin ranking loss.")] = 0.2,
    epochs: Annotated[int, typer.Option(help="Passes over the EK-100 MIR training clips.")] = 100,
    batch_size: BatchSize = 64,
    accum_steps: AccumSteps = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-5,
    warmup_epochs: WarmupEpochs = 1.0,
    lr_start: LrStart = 1e-6,
    lr_end: LrEnd = 1e-5,
    weight_decay: WeightDecay = 0.01,
    clip_grad: ClipGrad = None,
    workers: Workers = 8,
    precision: Precision = "bf16",
    decoder: Decoder = "pyav",
    decode_mode: DecodeMode = "fused",
    access: Access = "seek",
    seed: Seed = 0,
    device: Device = "auto",
    log_every: LogEvery = 10,
    save_every: SaveEvery = 500,
    save_every_epochs: SaveEveryEpochs = 1,
    keep: Keep = 2,
    resume: Resume = "auto",
    stop_after: StopAfter = None,
    eval_every: EvalEvery = 1,
    eval_at_start: EvalAtStart = False,
    compile: Compile = False,
    nproc_per_node: NprocPerNode = 1,
    nnodes: Nnodes = 1,
    node_rank: NodeRank = 0,
    rdzv_endpoint: RdzvEndpoint = "",
) -> None:
    """Fine-tune a pretrained dual encoder on EK-100 multi-instance retrieval (paper B.2).

    Max-margin ranking loss (margin 0.2) over the global batch, 16 frames, AdamW with warm-up from 1e-6
    to 3e-5 in the first epoch and a cosine down to 1e-5, drop path 0.1; mAP and nDCG on the test split
    after every epoch."""
    from avtool.train.config import OptimConfig
    from avtool.train.mir import MIRConfig

    cfg = MIRConfig(
        ek100=_ek100(ek100_root, ek100_annotations, required=True), pretrained_checkpoint=pretrained_checkpoint,
        run=_run_config(locals()),
        model=_model(model, pretrained, frames, embed_dim, attn, grad_ckpt, fast_conv1, drop_path, patch_dropout,
                     False, ckpt_keep_attention, fused_mlp),
        optim=OptimConfig(lr=lr, warmup_epochs=warmup_epochs, lr_start=lr_start, lr_end=lr_end,
                          weight_decay=weight_decay),
        decoder=_decoder(decoder, decode_mode, access), margin=margin,
    )  # fmt: skip
    _start("mir", cfg, nproc_per_node, nnodes, node_rank, rdzv_endpoint)


@train_app.command("cls")
def train_cls(
    ek100_root: Annotated[Path, typer.Argument(help="Chunked EK-100 videos (ROOT/P01/P01_01.MP4/0.MP4).")],
    ek100_annotations: Annotated[Path, typer.Argument(help="EK-100 annotations folder (EPIC_100_*.csv).")],
    pretrained_checkpoint: PretrainedCheckpoint = None,
    output: Output = Path("runs/cls"),
    model: Model = "ViT-B-16",
    pretrained: Pretrained = None,
    frames: Annotated[int, typer.Option(help="Frames per clip (paper: 16).")] = 16,
    attn: Attn = "sdpa",
    grad_ckpt: GradCkpt = True,
    ckpt_keep_attention: CkptKeepAttention = 0,
    fused_mlp: FusedMlp = False,
    fast_conv1: FastConv1 = True,
    drop_path: Annotated[float, typer.Option(help="Stochastic depth rate of the last video block.")] = 0.1,
    patch_dropout: PatchDropout = 0.0,
    dropout: Annotated[float, typer.Option(help="Dropout before the action head.")] = 0.5,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = 0.1,
    mixup: Annotated[float, typer.Option(help="Mixup Beta(α, α); 0: off.")] = 0.8,
    cutmix: Annotated[float, typer.Option(help="CutMix Beta(α, α); 0: off.")] = 1.0,
    flip: Annotated[float, typer.Option(help="Horizontal flip probability (fused into decoding).")] = 0.5,
    epochs: Annotated[int, typer.Option(help="Passes over the EK-100 training clips.")] = 100,
    batch_size: BatchSize = 64,
    accum_steps: AccumSteps = 1,
    lr: Annotated[float, typer.Option(help="Base learning rate per 128 clips of global batch (SGD).")] = 3e-3,
    warmup_epochs: WarmupEpochs = 1.0,
    lr_start: LrStart = 1e-6,
    lr_end: LrEnd = 1e-5,
    weight_decay: WeightDecay = 5e-4,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    clip_grad: ClipGrad = None,
    workers: Workers = 8,
    precision: Precision = "bf16",
    decoder: Decoder = "pyav",
    decode_mode: DecodeMode = "fused",
    access: Access = "seek",
    seed: Seed = 0,
    device: Device = "auto",
    log_every: LogEvery = 10,
    save_every: SaveEvery = 500,
    save_every_epochs: SaveEveryEpochs = 1,
    keep: Keep = 2,
    resume: Resume = "auto",
    stop_after: StopAfter = None,
    eval_every: EvalEvery = 1,
    eval_at_start: EvalAtStart = False,
    compile: Compile = False,
    nproc_per_node: NprocPerNode = 1,
    nnodes: Nnodes = 1,
    node_rank: NodeRank = 0,
    rdzv_endpoint: RdzvEndpoint = "",
) -> None:
    """Fine-tune the video tower with a verb:noun action head on EK-100 action recognition (paper B.3).

    SGD (momentum 0.9, weight decay 5e-4) at 3e-3 × global batch / 128 (0.012 at 8×64), warm-up then
    cosine, label smoothing 0.1, Mixup 0.8 / CutMix 1.0, dropout 0.5, drop path 0.1, flips; verb / noun /
    action top-1 on the validation split after every epoch (verbs and nouns from the action marginals)."""
    from avtool.train.cls import CLSConfig
    from avtool.train.config import OptimConfig
    from avtool.train.mixup import MixupConfig

    cfg = CLSConfig(
        ek100=_ek100(ek100_root, ek100_annotations, required=True), pretrained_checkpoint=pretrained_checkpoint,
        run=_run_config(locals()),
        model=_model(model, pretrained, frames, 256, attn, grad_ckpt, fast_conv1, drop_path, patch_dropout, False,
                     ckpt_keep_attention, fused_mlp),
        optim=OptimConfig(optimizer="sgd", lr=lr, lr_batch_scale=128, warmup_epochs=warmup_epochs,
                          lr_start=lr_start, lr_end=lr_end, weight_decay=weight_decay, momentum=momentum),
        mixup=MixupConfig(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing),
        dropout=dropout, flip=flip, decoder=_decoder(decoder, decode_mode, access),
    )  # fmt: skip
    _start("cls", cfg, nproc_per_node, nnodes, node_rank, rdzv_endpoint)


EvalFrames = Annotated[
    int | None, typer.Option("--frames", help="Frames per clip; unset: the checkpoint's (paper: 16).")
]
EvalBatch = Annotated[int, typer.Option(help="Clips per batch.")]
EvalOutput = Annotated[Path | None, typer.Option("--output", help="JSON file for the metrics; unset: next to CKPT.")]


@eval_app.command("mir")
def eval_mir(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint of `avtool train lavila` or `train mir`.")],
    ek100_root: Annotated[Path, typer.Argument(help="Chunked EK-100 videos.")],
    ek100_annotations: Annotated[Path, typer.Argument(help="EK-100 annotations folder (retrieval_annotations/).")],
    frames: EvalFrames = None,
    split: Annotated[str, typer.Option(help="MIR split: test or train.")] = "test",
    attn: Attn = "sdpa",
    batch_size: EvalBatch = 64,
    workers: Workers = 8,
    precision: Precision = "bf16",
    decoder: Decoder = "pyav",
    device: Device = "auto",
    output: EvalOutput = None,
) -> None:
    """EK-100 multi-instance retrieval: mAP and nDCG, V→T, T→V and their average, with the clip and
    sentence counts (test split: 9,668 clips × 3,842 sentences); chance level for comparison."""
    from avtool.train.run_eval import EvalConfig, evaluate_checkpoint

    cfg = EvalConfig(checkpoint, _ek100(ek100_root, ek100_annotations, required=True), "mir", split, frames, attn,
                     batch_size, workers, precision, _decoder(decoder, "fused", "seek"), device)  # fmt: skip
    _print_eval(evaluate_checkpoint(cfg), output or checkpoint.with_suffix(f".eval-mir-{split}.json"))


@eval_app.command("cls")
def eval_cls(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint of `avtool train cls`.")],
    ek100_root: Annotated[Path, typer.Argument(help="Chunked EK-100 videos.")],
    ek100_annotations: Annotated[Path, typer.Argument(help="EK-100 annotations folder (EPIC_100_*.csv).")],
    frames: EvalFrames = None,
    split: Annotated[str, typer.Option(help="Split: validation or train.")] = "validation",
    attn: Attn = "sdpa",
    batch_size: EvalBatch = 64,
    workers: Workers = 8,
    precision: Precision = "bf16",
    decoder: Decoder = "pyav",
    device: Device = "auto",
    output: EvalOutput = None,
) -> None:
    """EK-100 action recognition: verb, noun and action top-1 (verbs and nouns from the marginals of the
    action softmax), with the clip count; the training set's majority class for comparison."""
    from avtool.train.run_eval import EvalConfig, evaluate_checkpoint

    cfg = EvalConfig(checkpoint, _ek100(ek100_root, ek100_annotations, required=True), "cls", split, frames, attn,
                     batch_size, workers, precision, _decoder(decoder, "fused", "seek"), device)  # fmt: skip
    _print_eval(evaluate_checkpoint(cfg), output or checkpoint.with_suffix(f".eval-cls-{split}.json"))


def _print_eval(result: dict[str, Any], path: Path) -> None:
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
