"""Plain nn parts of the auxiliary-logit MLP experiment: N independent MLPs evaluated with batched matmuls.

Every parameter carries a leading model axis, so one forward pass evaluates all N models at once with `bmm`
instead of a Python loop over models. Losses return one value per model (shape [..., N]); training sums them,
which gives every model exactly the gradient it would get if it were trained alone, whatever N is.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DistillLoss = Literal["kl", "mse"]


class StackedLinear(nn.Module):
    """N independent affine maps: weight [N, in, out], bias [N, out]."""

    def __init__(self, num_models: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.num_models = num_models
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_models, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_models, out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Weights ~ N(0, std = fan_in ** -0.5), biases 0 (the paper's initialisation)."""
        self.weight.normal_(0.0, self.in_features**-0.5, generator=generator)
        self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, in] (one input batch shared by every model) or [N, B, in]; returns [N, B, out]."""
        if x.dim() == 2:
            # An expanded view costs no memory, and bmm on it was measured faster than matmul's broadcast.
            x = x.expand(self.num_models, *x.shape)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class StackedMLP(nn.Module):
    """N independent MLPs in_features -> width (depth hidden layers, ReLU) -> out_features."""

    def __init__(self, num_models: int, in_features: int, width: int, depth: int, out_features: int) -> None:
        super().__init__()
        if min(num_models, in_features, width, depth, out_features) < 1:
            raise ValueError(
                "StackedMLP sizes must be >= 1, got "
                f"num_models={num_models} in_features={in_features} width={width} depth={depth} "
                f"out_features={out_features}"
            )
        self.num_models = num_models
        sizes = [in_features, *[width] * depth, out_features]
        self.layers = nn.ModuleList(
            StackedLinear(num_models, fan_in, fan_out)
            for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for layer in self.layers:
            layer.reset_parameters(generator)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, in] shared by all models, or [N, B, in]; returns logits [N, B, out]."""
        for layer in self.layers[:-1]:
            # In place: baddbmm's backward needs its inputs, not its output, so this saves a copy per layer.
            x = torch.relu_(layer(x))
        return self.layers[-1](x)

    @torch.no_grad()
    def copy_models_from(self, source: StackedMLP, index: Tensor) -> None:
        """Model k of self becomes a copy of model index[k] of source (same architecture, len(index) == N)."""
        if len(index) != self.num_models:
            raise ValueError(f"index has {len(index)} entries for {self.num_models} models")
        for mine, theirs in zip(self.layers, source.layers, strict=True):
            mine.weight.copy_(theirs.weight[index])
            mine.bias.copy_(theirs.bias[index])


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the OS after every training step.

    Each step allocates and frees the same tens of MB of activations; by default glibc trims them off the heap
    and the next step page-faults them back in, measured at ~20% of a CPU step (N = 100, digits). This sets
    the process-wide malloc thresholds (mmap for blocks over 32 MB, glibc's maximum; trim above
    `trim_threshold` bytes); the resident set stays at the peak the run needs anyway. False where the C library
    is not glibc (nothing changed).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, trim_threshold))


def derangement(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random permutation of range(n) with no fixed point (perm[i] != i for every i).

    Rejection sampling: about 1/e of all permutations are derangements, so this takes ~2.7 draws on average.
    """
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    identity = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == identity).any()):
            return perm


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy per model, averaged over the batch. logits [..., B, C], labels [B] -> [...]."""
    lead = logits.shape[:-2]
    flat_labels = labels.expand(*lead, labels.shape[-1]).reshape(-1)
    per_example = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat_labels, reduction="none")
    return per_example.view(*lead, labels.shape[-1]).mean(dim=-1)


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, kind: DistillLoss = "kl", temperature: float = 1.0
) -> Tensor:
    """Per-model distillation loss, averaged over the examples of the batch. [..., B, K] -> [...].

    teacher_logits may broadcast against student_logits (one teacher batch for several student groups).

    kl: KL(teacher || student) between the temperature-softened distributions, summed over the K logits and
        averaged over the B examples (the reference code's "batchmean" on a models x batch tensor divided by
        the number of models instead).
    mse: squared difference of the raw logits, averaged over examples and logits.
    """
    try:
        torch.broadcast_shapes(student_logits.shape, teacher_logits.shape)
    except RuntimeError:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} do not broadcast to student logits "
            f"{tuple(student_logits.shape)}"
        ) from None
    if kind == "kl":
        log_p_student = _log_softmax(student_logits / temperature)
        log_p_teacher = _log_softmax(teacher_logits / temperature)
        per_example = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
        return per_example.mean(dim=-1)
    if kind == "mse":
        return (student_logits - teacher_logits).square().mean(dim=(-2, -1))
    raise ValueError(f"unknown distillation loss {kind!r} (choose 'kl' or 'mse')")


def _log_softmax(logits: Tensor) -> Tensor:
    # With a handful of logits per row, this was measured 3x faster than F.log_softmax on a CPU (fwd + bwd).
    return logits - logits.logsumexp(dim=-1, keepdim=True)


def correct_counts(logits: Tensor, labels: Tensor) -> Tensor:
    """Number of correct argmax predictions per model. logits [..., B, C], labels [B] -> [...] (int64)."""
    return (logits.argmax(dim=-1) == labels).sum(dim=-1)
