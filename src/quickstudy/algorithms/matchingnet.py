r"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016, arXiv:1606.04080).

A query x^ is labelled by attention over the support set S = {(x_i, y_i)} (y_i one-hot), with embeddings f
(queries) and g (support examples) and cosine similarity c:

    attention:    a(x^, x_i) = exp(c(f(x^), g(x_i))) / sum_j exp(c(f(x^), g(x_j)))
    prediction:   P(y = n | x^, S) = sum_i a(x^, x_i) [y_i = n]
    outer loss:   L_meta(theta) = 1/B * sum_tasks mean_{(x^, y) in Q} -log P(y | x^, S)

With ``normalize_query=False`` the similarity is g(x_i)/||g(x_i)|| . f(x^): only the support embeddings are
normalised, as in the widely copied open TensorFlow implementation of the Omniglot model and its PyTorch port
(github.com/gitabcworld/MatchingNetworks); the paper's equation normalises both. The query's norm then acts as a
learned inverse temperature: with both sides normalised every logit lies in [-1, 1], which caps P(true class) at
e / (e + (N-1)/e), 0.28 at 20 ways.

There is no inner loop. Without full-context embeddings (``fce=False``, the paper's Omniglot setting) f = g = the
model's embedding. With ``fce=True`` both see the whole support set (paper, appendix A.2), e' being the model's
embedding:

    g(x_i, S) = h_fwd_i + h_bwd_i + e'(x_i)               (a bidirectional LSTM over e'(x_1), ..., e'(x_n))
    f(x^, S)  = h_K,  K = ``fce_steps`` attention-LSTM steps from h_0 = c_0 = 0:
        r_{k-1} = sum_i softmax_i(h_{k-1} . g(x_i)) g(x_i)
        h^_k, c_k = LSTM(e'(x^), [h_{k-1}, r_{k-1}], c_{k-1});   h_k = h^_k + e'(x^)

``task_outputs`` returns log P (so ``argmax`` is the prediction and cross-entropy on it is the paper's loss).
The LSTMs are written from matrix products (one parameter matrix per gate stack), so every strategy (loop, vmap,
threads) runs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_int
from ..tasks.batch import Task
from .execution import Run
from .metric import MetricMetaLearner, class_onehot, embed

__all__ = ["MatchingNet", "matching_log_probs"]


def matching_log_probs(query: Tensor, support: Tensor, support_y: Tensor, ways: int,
                       normalize_query: bool = True) -> Tensor:
    """``log P(y = n | query)`` ``[q, ways]``: softmax attention over the cosine similarities between each query
    and every support embedding (with ``normalize_query=False``: the query left unnormalised), summed per class."""
    if normalize_query:
        query = F.normalize(query, dim=-1, eps=1e-8)
    similarity = query @ F.normalize(support, dim=-1, eps=1e-8).transpose(-1, -2)
    attention = torch.softmax(similarity, dim=-1)                      # [q, n]
    probs = attention @ class_onehot(support_y, ways, attention.dtype)  # [q, ways], rows sum to 1
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def _lstm_step(x: Tensor, state: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM cell step: gates from ``[x, state]`` (state may be wider than the cell, as [h, r] in f)."""
    gates = F.linear(torch.cat([x, state], dim=-1), weight, bias)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class MatchingNet(MetricMetaLearner):
    """``MatchingNet(model, fce=False, fce_steps=None, feature_dim=None, strategy="auto",
    normalize_query=True)``.

    Args:
        model: the embedding ``[n, ...] -> [n, D]`` (e.g. ``Conv4(ways=None)``).
        fce: full-context embeddings (the two LSTMs of the module docstring).
        fce_steps: K, the attention-LSTM steps of f (default: the number of support examples of the task).
        feature_dim: D for the LSTMs (default ``model.out_features``); only read with ``fce=True``.
        strategy: ``"auto"``, ``"loop"``, ``"vmap"`` or ``"threads"`` (:mod:`quickstudy.algorithms.execution`).
        normalize_query: ``False`` leaves the query embedding unnormalised (its norm a learned temperature).
    """

    def __init__(self, model: nn.Module, fce: bool = False, fce_steps: int | None = None,
                 feature_dim: int | None = None, strategy: str = "auto", normalize_query: bool = True) -> None:
        super().__init__(model, strategy)
        self.fce = check_bool("MatchingNet", "fce", fce)
        self.normalize_query = check_bool("MatchingNet", "normalize_query", normalize_query)
        self.fce_steps = check_int("MatchingNet", "fce_steps", fce_steps, allow_none=True)
        if self.fce:
            width = feature_dim if feature_dim is not None else getattr(self.model, "out_features", None)
            if not isinstance(width, int):
                raise ValueError("MatchingNet: fce=True needs the embedding width: the model has no integer "
                                 "out_features; pass feature_dim=<D>")
            d = check_int("MatchingNet", "feature_dim", width)
            scale = d ** -0.5  # PyTorch's LSTM initialisation: U(-1/sqrt(D), 1/sqrt(D))

            def uniform(*shape: int) -> nn.Parameter:
                return nn.Parameter(torch.empty(*shape).uniform_(-scale, scale))

            self.context = nn.ParameterDict({
                "forward_weight": uniform(4 * d, 2 * d), "forward_bias": uniform(4 * d),
                "backward_weight": uniform(4 * d, 2 * d), "backward_bias": uniform(4 * d),
                "attention_weight": uniform(4 * d, 3 * d), "attention_bias": uniform(4 * d),
            })

    def meta_parameters(self):
        meta = super().meta_parameters()
        if self.fce:
            meta["context"] = dict(self.context)
        return meta

    # ----------------------------------------------------------------- full-context embeddings
    def _support_context(self, p: dict[str, Tensor], z: Tensor) -> Tensor:
        """g(x_i, S) = h_fwd_i + h_bwd_i + e'(x_i), the LSTMs run over the support set in order."""
        zero = z.new_zeros(z.shape[-1])
        outputs = {}
        for direction, order in (("forward", range(len(z))), ("backward", reversed(range(len(z))))):
            h, c, hs = zero, zero, {}
            for i in order:
                h, c = _lstm_step(z[i], h, c, p[f"{direction}_weight"], p[f"{direction}_bias"])
                hs[i] = h
            outputs[direction] = torch.stack([hs[i] for i in range(len(z))])
        return outputs["forward"] + outputs["backward"] + z

    def _query_context(self, p: dict[str, Tensor], q: Tensor, g: Tensor, steps: int) -> Tensor:
        """f(x^, S): ``steps`` attention-LSTM steps reading the support context g."""
        h, c = torch.zeros_like(q), torch.zeros_like(q)
        for _ in range(steps):
            r = torch.softmax(h @ g.transpose(-1, -2), dim=-1) @ g  # read the support set with h_{k-1}
            h_hat, c = _lstm_step(q, torch.cat([h, r], dim=-1), c, p["attention_weight"], p["attention_bias"])
            h = h_hat + q
        return h

    # ----------------------------------------------------------------- the maths of one task
    def task_outputs(self, meta, task: Task, run: Run) -> Tensor:
        support = embed("MatchingNet", run, meta["embed"], task.support_x)
        query = embed("MatchingNet", run, meta["embed"], task.query_x)
        if self.fce:
            p = meta["context"]
            support = self._support_context(p, support)
            query = self._query_context(p, query, support, self.fce_steps or len(support))
        return matching_log_probs(query, support, task.support_y, task.ways, self.normalize_query)

    def output_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.nll_loss(outputs, targets)  # outputs are log-probabilities: -log P(y | x^, S)

    def extra_repr(self) -> str:
        return (f"fce={self.fce}, fce_steps={self.fce_steps}, normalize_query={self.normalize_query}, "
                f"strategy={self.strategy!r}")
