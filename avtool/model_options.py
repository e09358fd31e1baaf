"""The model's speed and memory options of §4.1 (attention kernel, checkpointing, fast conv1, fused MLP,
low-precision residual), defined once for the towers, `avtool train` and `avtool bench`, and importable
without torch."""

from __future__ import annotations

from typing import Any, Literal, get_args

from avtool.options import option

AttnImpl = Literal["sdpa", "math", "flash", "efficient", "cudnn", "flash-attn", "fa4"]
ATTN_IMPLS: tuple[str, ...] = get_args(AttnImpl)


# The memory and speed options of §4.1, shared by `avtool train` and `avtool bench model|memory`.
def attn_option() -> Any:
    return option(
        "sdpa", flags="--attn", panel="Model",
        help="Attention kernel: sdpa (torch picks flash or memory-efficient), flash, efficient, cudnn (that SDPA "
        "kernel), math (the paper's baseline, N×N memory), flash-attn (the flash-attn package, pip install "
        "'avtool[flash]'), fa4 (FlashAttention-4 for Hopper and Blackwell, pip install 'avtool[fa4]').",
        switches=(("--use-flash-attn", "sdpa", "AVION's flag: memory-efficient attention, here --attn sdpa (torch's "
                   "FlashAttention kernel)."),),
    )  # fmt: skip


def grad_checkpointing_option() -> Any:
    return option(
        True,
        flags=("--grad-ckpt", "--grad-checkpointing"),
        panel="Model",
        help="Recompute each block's activations in backward (§4.1; the paper: 13.8× the batch at 1.4× the step time).",
    )


def ckpt_blocks_option() -> Any:
    return option(None, panel="Model", metavar="INT", show_default="all",
                  help="With --grad-ckpt, checkpoint only the first k video blocks (the text tower is always "
                  "checkpointed in full); none: all.")  # fmt: skip


def ckpt_keep_attention_option() -> Any:
    return option(0, panel="Model", unit="blocks",
                  help="With --grad-ckpt, the last k checkpointed video blocks keep their attention outputs instead "
                  "of recomputing the attention (selective checkpointing).")  # fmt: skip


def fast_conv1_option(default: bool = True) -> Any:
    return option(
        default,
        flags=("--fast-conv1", "--use-fast-conv1"),
        panel="Model",
        help="Patch embedding as one matmul on unfolded patches (AVION's fast conv1; same maths).",
    )


def fused_mlp_option() -> Any:
    return option(False, panel="Model",
                  help="Each MLP with its GELU in the matmuls' epilogues (quack's CuTe GEMMs on Hopper or "
                  "Blackwell, pip install 'avtool[fa4]'; same maths).")  # fmt: skip


def low_precision_residual_option() -> Any:
    return option(False, panel="Model",
                  help="Carry the residual stream between blocks in the autocast dtype instead of float32 (both "
                  "towers): halves the block inputs checkpointing keeps; rounds the residual sums.")  # fmt: skip
