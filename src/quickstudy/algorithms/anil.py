r"""ANIL — Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020, arXiv:1909.09157).

The network is split into a body g (theta_b) and a head h (theta_h, by default the last ``nn.Linear``).
Only the head adapts; the body's features are computed once per task and reused by every inner step:

    features:        z_S = g(S_i.x; theta_b),   z_Q = g(Q_i.x; theta_b)
    inner update:    psi_i^0 = theta_h,    psi_i^{j+1} = psi_i^j - alpha * grad_psi L(h(z_S; psi_i^j), S_i.y)
    outer loss:      L_meta(theta_b, theta_h) = 1/B * sum_i L(h(z_Q; psi_i^k), Q_i.y)

theta_b is meta-learned through the outer loss only (through z_Q and, at second order, through the
inner gradients' dependence on z_S); it never changes inside a task.

The body's output is captured with a forward hook on the head module, so any model whose output is the
head's output works; ``head`` names the head module (as in ``model.named_modules()``), default: the
last ``nn.Linear``.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torch.func import functional_call

from .execution import Run
from .gradient import GradientMetaLearner
from .inner_loop import sgd_inner_loop

__all__ = ["ANIL"]


class ANIL(GradientMetaLearner):
    """``ANIL(model, inner_lr=0.4, inner_steps=1, first_order=False, loss="cross_entropy", strategy="auto", head=None)``.

    ``head``: name of the submodule that adapts (default: the last ``nn.Linear``); it must produce the
    model's output. Other arguments as :class:`~.maml.MAML`.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        strategy: str = "auto",
        eval_steps: int | None = None,
        task_type: str | None = None,
        head: str | None = None,
    ) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order, loss=loss,
                         strategy=strategy, eval_steps=eval_steps, task_type=task_type)
        modules = dict(self.model.named_modules())
        if head is None:
            linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("ANIL: the model has no nn.Linear to adapt; pass head=<name of the head module>")
            head = linears[-1]
        elif not isinstance(head, str) or head not in modules or head == "":
            names = [n for n in modules if n]
            raise ValueError(f"ANIL: head must name a submodule of the model (one of {names}); got {head!r}")
        self.head = head
        params = self.learner.params()
        prefix = head + "."
        #: full parameter name -> name inside the head module
        self.head_params = {n: n[len(prefix):] for n in params if n.startswith(prefix)}
        if not self.head_params:
            raise ValueError(f"ANIL: the head module {head!r} has no trainable parameters")

    def features(self, params, x: Tensor, run: Run | None = None) -> Tensor:
        """The head's input when the model runs with ``params`` (the head's output is discarded)."""
        run = run or Run(self.learner)
        captured = {}

        def hook(module, inputs, output):
            captured["z"], captured["out"] = inputs[0], output

        handle = run.model.module.get_submodule(self.head).register_forward_hook(hook)
        try:
            out = run(params, x)
        finally:
            handle.remove()
        if "z" not in captured or captured["out"] is not out:
            raise ValueError(f"ANIL: the head module {self.head!r} must produce the model's output")
        return captured["z"]

    def _head(self, head_params, z: Tensor, run: Run) -> Tensor:
        head = run.model.module.get_submodule(self.head)  # this run's own module structure (threads)
        return functional_call(head, {self.head_params[n]: t for n, t in head_params.items()}, (z,))

    def inner_adapt(self, meta, support_x, support_y, steps, create_graph, run):
        params = meta["params"]
        head = {n: params[n] for n in self.head_params}
        if steps == 0:
            return head, []
        z = self.features(params, support_x, run)  # computed once, reused by every inner step
        if not create_graph:
            z = z.detach()
        return sgd_inner_loop(lambda p, features: self._head(p, features, run), head, z, support_y, self.loss_fn,
                              steps, self.inner_lr, create_graph=create_graph, use_func=run.use_func)

    def forward_adapted(self, meta, fast, x, run):
        return self._head(fast, self.features(meta["params"], x, run), run)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", head={self.head!r}"
