r"""BOIL — Body Only update in Inner Loop (Oh, Yoo, Kim & Yun, ICLR 2021, arXiv:2008.08882).

The network is a body g (theta_b) and a head h (theta_h, by default the last ``nn.Linear``). BOIL is ANIL reversed:
the head is frozen inside a task and only the body adapts, so the representation must change to fit a task:

    inner update:   phi_b^0 = theta_b,
                    phi_b^{j+1} = phi_b^j - alpha * grad_{phi_b} L(h(g(S.x; phi_b^j); theta_h), S.y)
    outer loss:     L_meta(theta_b, theta_h) = 1/B * sum_i L(h(g(Q_i.x; phi_{b,i}^k); theta_h), Q_i.y)

theta_h is meta-learned through the outer loss only (at second order also through its place in the inner
gradients). ``head`` names the frozen module as in :class:`~.anil.ANIL`.
"""

from __future__ import annotations

from .anil import ANIL
from .inner_loop import sgd_inner_loop

__all__ = ["BOIL"]


class BOIL(ANIL):
    """``BOIL(model, inner_lr=0.4, inner_steps=1, first_order=False, loss="cross_entropy", strategy="auto",
    eval_steps=None, head=None)``: arguments as :class:`~.anil.ANIL`, whose ``head`` is here the part that stays
    fixed in the inner loop."""

    def _split(self, params):
        head = {n: params[n] for n in self.head_params}
        return {n: p for n, p in params.items() if n not in self.head_params}, head

    def inner_adapt(self, meta, support_x, support_y, steps, create_graph, run):
        body, head = self._split(meta["params"])
        return sgd_inner_loop(lambda p, x: run({**p, **head}, x), body, support_x, support_y, self.loss_fn, steps,
                              self.inner_lr, create_graph=create_graph, use_func=run.use_func)

    def forward_adapted(self, meta, fast, x, run):
        _, head = self._split(meta["params"])
        return run({**fast, **head}, x)
