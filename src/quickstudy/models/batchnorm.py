"""Batch norm written from primitive ops, with a declared policy for the inner loops of meta-learning.

Why not ``nn.BatchNorm2d``: ``torch.func.vmap`` over a ``torch.func.grad`` inner loop with the native
``F.batch_norm`` in training mode returns *silently wrong* second-order gradients in torch 2.13 (relative
error 0.4-8 %, also in float64; pytorch/functorch#534). The same layer
written from primitive ops (``var_mean`` for the mean and biased variance, then one ``addcmul`` for the
affine map) is exact under vmap. :class:`TaskBatchNorm` therefore takes the primitive form whenever its
input is a ``torch.func`` tensor (inside vmap / ``torch.func.grad``), and the fused native kernel on plain
tensors (the per-task loop and inference), where it is exact and faster on CPU (``primitive=True``
forces the primitive form everywhere). ``tests/test_models.py`` checks the primitive form against the native
layer; ``tests/test_strategy.py`` checks vmap against the loop at second order in float64.

Policies (``policy=``, also the ``batch_norm=`` argument of every quickstudy backbone):

``"transductive"`` (default)
    Always normalise with the statistics of the batch in hand, in training *and* in evaluation mode, and
    keep no running statistics. Inside a meta-learner a forward pass sees one task's support set or one
    task's query set, so the statistics are per task. This is what MAML's published numbers use (Finn et
    al.'s code calls ``tf.contrib.layers.batch_norm`` with ``is_training=True`` at meta-test time too) and
    what most few-shot papers follow; it is transductive because a query prediction depends on the other
    queries of its task.
``"running"``
    The standard rule: in training mode normalise with the batch statistics and update running estimates
    ``r <- (1 - momentum) r + momentum * batch_stat`` (unbiased variance, as PyTorch); in evaluation mode
    normalise with the running estimates, so a query prediction depends on that query alone. The running
    statistics are updated by every training-mode forward pass, including the inner-loop passes on
    support sets. They cannot be updated inside ``torch.func.vmap``: the meta-learners fall back to the
    per-task loop (``strategy="auto"``) or refuse ``strategy="vmap"`` while the model is in training mode.
    (Per-inner-step statistics as in MAML++ are not implemented.)
``"none"``
    No normalisation (the backbones put ``nn.Identity`` in its place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels.batchnorm_grad import batch_norm_train
from ..kernels.functorch import is_functorch_tensor as _under_functorch

__all__ = ["BN_POLICIES", "TaskBatchNorm", "TaskBatchNorm2d", "make_norm"]

BN_POLICIES = ("transductive", "running", "none")
#: dtypes for which the plain-autograd path uses :func:`~quickstudy.kernels.batch_norm_train` (bfloat16: the
#: convolution outputs under autocast; its double backward then computes in float32, like the statistics)
_LEAN_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def check_bn_policy(owner: str, policy: object) -> str:
    if policy not in BN_POLICIES:
        raise ValueError(
            f"{owner}: batch_norm must be one of {', '.join(repr(p) for p in BN_POLICIES)}; got {policy!r}"
        )
    return policy  # type: ignore[return-value]


class TaskBatchNorm(nn.Module):
    """Batch normalisation over every dimension except the channel dimension 1, from primitive ops.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the mean and *biased* variance over the
    batch and spatial dimensions, as ``nn.BatchNorm{1,2,3}d`` in training mode. ``policy`` is
    ``"transductive"`` or ``"running"`` (see the module docstring).
    """

    def __init__(
        self,
        num_features: int,
        policy: str = "transductive",
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"TaskBatchNorm: num_features must be a positive integer, got {num_features!r}")
        if policy not in ("transductive", "running"):
            raise ValueError(f"TaskBatchNorm: policy must be 'transductive' or 'running'; got {policy!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"TaskBatchNorm: momentum must be in [0, 1], got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"TaskBatchNorm: eps must be positive, got {eps!r}")
        self.num_features = num_features
        self.policy = policy
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = affine
        #: use the primitive-op form on plain tensors too (it is always used inside torch.func transforms)
        self.primitive = False
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        if policy == "running":
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

    @property
    def updates_running_stats(self) -> bool:
        """True when a forward pass writes the running statistics (not possible inside vmap)."""
        return self.policy == "running" and self.training

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects [batch, {self.num_features}, ...], "
                f"got {tuple(x.shape)}"
            )

    def lean_train_applies(self, x: Tensor) -> bool:
        """Whether the forward pass runs :func:`~quickstudy.kernels.batch_norm_train`: plain autograd (the
        per-task loop) with batch statistics, where its closed-form double backward replaces torch's generic
        one (in second-order MAML that was a quarter of a Conv4 meta-step on CPU). ``primitive=True`` opts out."""
        return (not self.primitive and not _under_functorch(x) and (self.policy == "transductive" or self.training)
                and self.affine and torch.is_grad_enabled() and x.dtype in _LEAN_DTYPES)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        use_batch_stats = self.policy == "transductive" or self.training
        running = self.policy == "running"
        if not self.primitive and not _under_functorch(x):
            # plain autograd (the per-task loop, inference): the fused native kernels are exact here and the
            # fastest
            if self.lean_train_applies(x):
                return batch_norm_train(x, self.weight, self.bias, self.running_mean if running else None,
                                        self.running_var if running else None, self.momentum, self.eps)
            return F.batch_norm(
                x,
                self.running_mean if running else None,
                self.running_var if running else None,
                self.weight if self.affine else None,
                self.bias if self.affine else None,
                training=use_batch_stats,
                momentum=self.momentum,
                eps=self.eps,
            )
        # inside torch.func transforms (vmap over tasks): primitive ops only, exact at second order
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()  # autocast: statistics and normalisation in float32 (as the native kernel does)
        if use_batch_stats:
            dims = [0] + list(range(2, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)  # biased, as batch norm
            if running:
                self._update_running(mean, var, x.numel() // self.num_features)
        else:
            mean, var = self.running_mean.view(shape), self.running_var.view(shape)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.view(shape)
        shift = -mean * scale
        if self.affine:
            shift = shift + self.bias.view(shape)
        return torch.addcmul(shift, x, scale)  # (x - mean) / sqrt(var + eps) * weight + bias in one pass

    def _update_running(self, mean: Tensor, var: Tensor, count: int) -> None:
        with torch.no_grad():
            unbiased = var.detach().flatten() * (count / max(count - 1, 1))
            try:
                self.running_mean.mul_(1 - self.momentum).add_(mean.detach().flatten(), alpha=self.momentum)
                self.running_var.mul_(1 - self.momentum).add_(unbiased, alpha=self.momentum)
            except RuntimeError as error:  # typically: an in-place update with a vmap-batched statistic
                raise RuntimeError(
                    "TaskBatchNorm(policy='running') cannot update its running statistics here (inside "
                    "torch.func.vmap?): use strategy='loop', the 'transductive' policy, or eval() mode. "
                    f"Original error: {error}"
                ) from error

    def extra_repr(self) -> str:
        return f"{self.num_features}, policy={self.policy!r}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class TaskBatchNorm2d(TaskBatchNorm):
    """:class:`TaskBatchNorm` for ``[batch, channels, height, width]`` inputs."""

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"TaskBatchNorm2d({self.num_features}) expects [batch, {self.num_features}, H, W], got {tuple(x.shape)}"
            )


def make_norm(policy: str, num_features: int) -> nn.Module:
    """A :class:`TaskBatchNorm2d` for ``policy`` ``"transductive"``/``"running"``, ``nn.Identity`` for ``"none"``."""
    check_bn_policy("make_norm", policy)
    if policy == "none":
        return nn.Identity()
    return TaskBatchNorm2d(num_features, policy=policy)
