"""The transformer MLP with its activation fused into the matmuls (quack's CuTe GEMM epilogues).

Optional: the ``quack-kernels`` package (it comes with ``pip install 'avtool[fa4]'``), Hopper or Blackwell
GPUs. ``torch.compile`` leaves GELU to its own elementwise kernels around cuBLAS: in a checkpointed block
it reads and writes the (tokens × 4·width) hidden layer three extra times per step (the forward, its
recomputation, and the backward's GELU derivative). Here the first matmul's epilogue adds the bias and
writes both the pre-activation and the activation, and the backward of the second matmul applies the
activation's derivative in its epilogue, recomputing the activation there for the weight gradient. The
maths is the exact (erf) GELU, or QuickGELU for OpenAI's CLIP weights: the model does not change.

Two custom ops, each opaque to ``torch.compile`` (fake kernels give their shapes):
- ``avtool::linear_act(x, w1, b1, act)`` → (pre-activation, activation); its backward is an ordinary
  linear backward from the pre-activation's gradient, in PyTorch ops that the compiler sees;
- ``avtool::act_linear(pre, post, w2, b2, act)`` → post · w2ᵀ + b2, saving only the pre-activation; its
  backward op returns the pre-activation's gradient (through the activation) and w2's and b2's.
Splitting at the activation keeps a checkpointed block's recomputation to the first matmul, which is all
the backward needs. On a CPU both ops run plain PyTorch, so their autograd and compilation are tested
without a GPU. On an H200 the ViT-B dual encoder's training step with fa4 and checkpointing ran 1.022×
faster with it at the same checkpointing, at 3.8 MB/video less peak memory (benchmarks/README.md).

``config``: a quack ``GemmConfig`` (tile, cluster, schedule); None is quack's default.
"""

from __future__ import annotations

import contextvars
import functools

import torch
import torch.nn.functional as F

try:  # optional: comes with pip install 'avtool[fa4]'
    from quack import gemm_interface as _quack
except ImportError:
    _quack = None

QUACK_ACTIVATIONS = {"gelu": "gelu_erf", "quick_gelu": "quick_gelu"}
"""avtool's activation names → quack's epilogue activations (the same functions)."""


def fused_mlp_available() -> bool:
    """Whether quack's GEMM kernels can be imported here."""
    return _quack is not None


def check_fused_mlp(on_cuda: bool | None = None) -> str | None:
    """Why the fused MLP cannot run here, or None when it can (on a CPU it always can)."""
    if fused_mlp_available() or not (torch.cuda.is_available() if on_cuda is None else on_cuda):
        return None
    return "fused_mlp on CUDA needs the quack-kernels package (pip install 'avtool[fa4]')"


def _activation(pre: torch.Tensor, act: str) -> torch.Tensor:
    if act == "gelu":
        return F.gelu(pre)
    return pre * torch.sigmoid(1.702 * pre)


def _activation_and_derivative(pre: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """act(pre) and act'(pre), computed in float32."""
    x = pre.float()
    if act == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(x * 2**-0.5))
        return x * cdf, cdf + x * torch.exp(-0.5 * x * x) * (2 * torch.pi) ** -0.5
    s = torch.sigmoid(1.702 * x)
    return x * s, s + 1.702 * x * s * (1 - s)


HOPPER_GEMM_TILE = dict(tile_m=128, tile_n=256, pingpong=False, cluster_m=2, cluster_n=1)
"""quack ``GemmConfig`` fields of both fused GEMMs on Hopper. quack's autotuner would compile 44 shapes per
GEMM (minutes per model shape); ``benchmarks/fused_mlp.py`` measured five at ViT-B's MLP on an H200, and
this one was the fastest for both: 1.76 ms (fc1 + bias + GELU) and 2.11 ms (fc2's input gradient + GELU'),
against quack's default's 2.10 and 2.91 ms (cuBLAS's plain products: 1.35 and 1.34 ms)."""


@functools.cache
def _gemm_config(capability: int):
    if capability != 9:
        return None  # quack's default elsewhere (Blackwell: not measured)
    from quack.gemm_config import GemmConfig

    return GemmConfig(**HOPPER_GEMM_TILE, is_dynamic_persistent=False, device_capacity=9)


def _let_quack_key_dsl_internals() -> None:
    """quack caches each epilogue's kernel under a fingerprint of the Python it depends on, and refuses
    values it cannot fingerprint. Under cutlass-dsl 4.8.1 the activation helpers reach such values inside
    the DSL (a ContextVar of source-location transforms, a method of code objects), so every activation
    epilogue fails with "no fail-closed semantic key". None of them changes the traced maths of the fixed
    activations used here: key them by their type and name."""
    from quack.gemm_runtime import identity

    package_key = identity.semantic_value_key
    if getattr(package_key, "keys_dsl_internals", False):
        return

    def semantic_value_key(value, seen):
        if isinstance(value, contextvars.ContextVar):
            return ("contextvar", value.name)
        try:
            return package_key(value, seen)
        except TypeError as error:
            if "fail-closed semantic key" not in str(error):
                raise
            kind = type(value)
            return ("dsl-internal", kind.__module__, kind.__qualname__, getattr(value, "__qualname__", None))

    semantic_value_key.keys_dsl_internals = True
    identity.semantic_value_key = semantic_value_key  # its own recursion looks the name up here


def run_linear_act(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: str, config: object | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """quack's GEMM with the bias and activation in its epilogue: (pre, act(pre)) for x (M, K), weight (N, K)."""
    _let_quack_key_dsl_internals()
    return _quack.gemm_act(x, weight.T, bias=bias, activation=QUACK_ACTIVATIONS[act], tuned=False, config=config)


def run_act_linear_backward(
    grad_out: torch.Tensor, pre: torch.Tensor, weight: torch.Tensor, act: str, config: object | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """quack's GEMM grad_out·weight with act'(pre) in its epilogue: (grad of pre, act(pre) recomputed)."""
    _let_quack_key_dsl_internals()
    return _quack.gemm_dact(grad_out, weight, pre, activation=QUACK_ACTIVATIONS[act], tuned=False, config=config)


@torch.library.custom_op("avtool::linear_act", mutates_args=(), device_types="cuda")
def linear_act(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """For x (M, K), weight (N, K): pre = x·weightᵀ + bias and act(pre), both (M, N)."""
    pre, post = run_linear_act(x, weight, bias, act, _gemm_config(torch.cuda.get_device_capability(x.device)[0]))
    return pre, post


@torch.library.custom_op("avtool::act_linear", mutates_args=(), device_types="cuda")
def act_linear(
    pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: str
) -> torch.Tensor:
    """post·weightᵀ + bias for post = act(pre) (M, K), weight (N, K); ``pre`` is what backward keeps."""
    return torch.addmm(bias, post, weight.T)


@torch.library.custom_op("avtool::act_linear_backward", mutates_args=(), device_types="cuda")
def act_linear_backward(
    grad_out: torch.Tensor, pre: torch.Tensor, weight: torch.Tensor, act: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``act_linear`` for pre (through the activation), weight and bias."""
    grad_out = grad_out.contiguous()
    grad_pre, post = run_act_linear_backward(
        grad_out, pre, weight, act, _gemm_config(torch.cuda.get_device_capability(pre.device)[0])
    )
    return grad_pre, grad_out.T @ post, grad_out.sum(0)


@linear_act.register_kernel("cpu")
def _linear_act_cpu(x, weight, bias, act):
    pre = torch.addmm(bias, x, weight.T)
    return pre, _activation(pre, act)


@act_linear.register_kernel("cpu")
def _act_linear_cpu(pre, post, weight, bias, act):
    return torch.addmm(bias, post, weight.T)


@act_linear_backward.register_kernel("cpu")
def _act_linear_backward_cpu(grad_out, pre, weight, act):
    post, derivative = _activation_and_derivative(pre, act)
    grad_pre = (grad_out @ weight).float() * derivative
    return grad_pre.to(pre.dtype), grad_out.T @ post.to(pre.dtype), grad_out.sum(0)


@linear_act.register_fake
def _(x, weight, bias, act):
    shape = (x.shape[0], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape)


@act_linear.register_fake
def _(pre, post, weight, bias, act):
    return post.new_empty(post.shape[0], weight.shape[0])


@act_linear_backward.register_fake
def _(grad_out, pre, weight, act):
    return torch.empty_like(pre), grad_out.new_empty(weight.shape), grad_out.new_empty(weight.shape[0])


def _linear_act_setup(ctx, inputs, output) -> None:
    x, weight, _, _ = inputs
    # The activation's gradient reaches this op through the pre-activation (act_linear's backward applies
    # act'); a gradient for the activation itself would be a second, wrong path.
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, weight)


def _linear_act_backward(ctx, grad_pre, _grad_post):
    x, weight = ctx.saved_tensors
    return grad_pre @ weight, grad_pre.T @ x, grad_pre.sum(0), None


linear_act.register_autograd(_linear_act_backward, setup_context=_linear_act_setup)


def _act_linear_setup(ctx, inputs, output) -> None:
    pre, _, weight, _, act = inputs
    ctx.save_for_backward(pre, weight)
    ctx.act = act


def _act_linear_backward(ctx, grad_out):
    pre, weight = ctx.saved_tensors
    grad_pre, grad_weight, grad_bias = act_linear_backward(grad_out, pre, weight, ctx.act)
    return grad_pre, None, grad_weight, grad_bias, None


act_linear.register_autograd(_act_linear_backward, setup_context=_act_linear_setup)


def fused_mlp(x: torch.Tensor, fc: torch.nn.Linear, proj: torch.nn.Linear, act: str = "gelu") -> torch.Tensor:
    """proj(act(fc(x))) for x (..., dim), through the fused ops; under autocast, in its dtype."""
    if act not in QUACK_ACTIVATIONS:
        raise ValueError(f"fused MLP activation {act!r} is not one of {', '.join(QUACK_ACTIVATIONS)}")
    device = x.device.type
    # Custom ops are outside autocast's casting rules: cast as autocast would for a linear layer.
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    w1, b1, w2, b2 = (p.to(dtype) for p in (fc.weight, fc.bias, proj.weight, proj.bias))
    pre, post = linear_act(x.reshape(-1, x.shape[-1]).to(dtype), w1, b1, act)
    return act_linear(pre, post, w2, b2, act).view(*x.shape[:-1], w2.shape[0])
