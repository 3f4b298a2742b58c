r"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018, arXiv:1711.06025).

An embedding f_phi and a learned relation module g_psi replace the fixed metric of prototypical networks:

    class feature:    s_n = sum_{(x, y) in S, y = n} f_phi(x)                 (element-wise sum over the K shots)
    relation score:   r_{q,n} = g_psi(concat(s_n, f_phi(x_q))) in (0, 1)     (concatenated along channels)
    outer loss:       L_meta(phi, psi) = 1/B * sum_tasks mean_{q,n} (r_{q,n} - [y_q = n])^2   (mean squared error)

and a query gets the class of its highest score. There is no inner loop. With spatial embeddings (a model with
``feature_shape = (C, H, W)``, e.g. ``Conv4(ways=None, pooled_blocks=2)``: 64 x 7 x 7 on Omniglot) g_psi is the
paper's module: two blocks of 3x3 convolution (C filters, padding 1), batch norm, ReLU and 2x2 max-pool, then
fully connected layers C' -> ``hidden`` (8) -> 1 with a ReLU between and a sigmoid at the end. With vector
embeddings (``[n, D]``) the two blocks become linear layers (2D -> D -> D). The module's batch norm uses the
statistics of the task's N*Q pairs (transductive, as the rest of quickstudy's batch norm).

The relation module is written as functions of its parameters (``self.relation``), so every strategy (loop,
vmap, threads) runs it; ``task_outputs`` returns the scores ``[N*Q, N]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_int
from ..tasks.batch import Task
from .execution import Run
from .metric import MetricMetaLearner, class_onehot, embed

__all__ = ["RelationNet"]


def _batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Batch statistics over every dimension but the channels (primitive ops: exact under vmap)."""
    dims = [0] + list(range(2, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean) * torch.rsqrt(var + eps) * weight.view(shape) + bias.view(shape)


def _uniform(fan_in: int, *shape: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)  # PyTorch's default for conv and linear layers
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class RelationNet(MetricMetaLearner):
    """``RelationNet(model, hidden=8, feature_shape=None, strategy="auto")``.

    Args:
        model: the embedding ``[n, ...] -> [n, D]``; its ``feature_shape`` (or the ``feature_shape`` argument),
            when 3-d ``(C, H, W)``, says how to view the D features as maps for the convolutional module.
        hidden: width of the relation module's last hidden layer (the paper: 8).
        feature_shape: ``(C, H, W)`` or ``(D,)``; default ``model.feature_shape`` or else vectors.
        strategy: ``"auto"``, ``"loop"``, ``"vmap"`` or ``"threads"`` (:mod:`quickstudy.algorithms.execution`).
    """

    def __init__(self, model: nn.Module, hidden: int = 8, feature_shape: list[int] | None = None,
                 strategy: str = "auto") -> None:
        super().__init__(model, strategy)
        self.hidden = check_int("RelationNet", "hidden", hidden)
        shape = feature_shape if feature_shape is not None else getattr(self.model, "feature_shape", None)
        if shape is None:
            width = getattr(self.model, "out_features", None)
            if not isinstance(width, int):
                raise ValueError("RelationNet: cannot tell the embedding's shape (the model has no feature_shape or "
                                 "integer out_features); pass feature_shape=[C, H, W] or [D]")
            shape = (width,)
        shape = tuple(check_int("RelationNet", "feature_shape", int(s)) for s in shape)
        if len(shape) == 3 and min(shape[1:]) < 4:
            shape = (math.prod(shape),)  # two 2x2 max-pools need maps of 4x4 or more: compare as vectors
        if len(shape) not in (1, 3):
            raise ValueError(f"RelationNet: feature_shape must be [C, H, W] or [D], got {list(shape)}")
        self.feature_shape = shape
        c = shape[0]
        params: dict[str, nn.Parameter] = {}
        if len(shape) == 3:
            for i, width_in in ((1, 2 * c), (2, c)):
                params[f"conv{i}_weight"] = _uniform(width_in * 9, c, width_in, 3, 3)
                params[f"conv{i}_bias"] = _uniform(width_in * 9, c)
            side = shape[1] // 2 // 2
            flat = c * side * side
        else:
            for i, width_in in ((1, 2 * c), (2, c)):
                params[f"fc{i}_weight"] = _uniform(width_in, c, width_in)
                params[f"fc{i}_bias"] = _uniform(width_in, c)
            flat = c
        for i in (1, 2):
            params[f"norm{i}_weight"] = nn.Parameter(torch.ones(c))
            params[f"norm{i}_bias"] = nn.Parameter(torch.zeros(c))
        params["hidden_weight"], params["hidden_bias"] = _uniform(flat, self.hidden, flat), _uniform(flat, self.hidden)
        params["score_weight"], params["score_bias"] = _uniform(self.hidden, 1, self.hidden), _uniform(self.hidden, 1)
        self.relation = nn.ParameterDict(params)

    def meta_parameters(self):
        return {**super().meta_parameters(), "relation": dict(self.relation)}

    def relation_scores(self, p: dict[str, Tensor], pairs: Tensor) -> Tensor:
        """g_psi: ``[P, 2C, H, W]`` (or ``[P, 2D]``) concatenated pairs -> ``[P]`` scores in (0, 1)."""
        x = pairs
        for i in (1, 2):
            if x.dim() == 4:
                x = F.conv2d(x, p[f"conv{i}_weight"], p[f"conv{i}_bias"], padding=1)
                x = F.max_pool2d(F.relu(_batch_norm(x, p[f"norm{i}_weight"], p[f"norm{i}_bias"])), 2)
            else:
                x = F.linear(x, p[f"fc{i}_weight"], p[f"fc{i}_bias"])
                x = F.relu(_batch_norm(x, p[f"norm{i}_weight"], p[f"norm{i}_bias"]))
        x = F.relu(F.linear(x.flatten(1), p["hidden_weight"], p["hidden_bias"]))
        return torch.sigmoid(F.linear(x, p["score_weight"], p["score_bias"])).squeeze(-1)

    def task_outputs(self, meta, task: Task, run: Run) -> Tensor:
        support = embed("RelationNet", run, meta["embed"], task.support_x)
        query = embed("RelationNet", run, meta["embed"], task.query_x)
        ways = task.ways
        classes = class_onehot(task.support_y, ways, support.dtype).transpose(0, 1) @ support  # [N, D]: sums
        q = query.shape[0]
        shape = self.feature_shape
        pairs = torch.cat([classes.unsqueeze(0).expand(q, ways, -1), query.unsqueeze(1).expand(q, ways, -1)], dim=-1)
        if len(shape) == 3:  # concatenate along channels: [q*N, 2C, H, W]
            pairs = pairs.reshape(q * ways, 2, *shape).flatten(1, 2)
        else:
            pairs = pairs.reshape(q * ways, 2 * shape[0])
        return self.relation_scores(meta["relation"], pairs).reshape(q, ways)

    def output_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, class_onehot(targets, outputs.shape[-1], outputs.dtype))

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, feature_shape={list(self.feature_shape)}, strategy={self.strategy!r}"
