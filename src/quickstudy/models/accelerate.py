r"""Run any model made of standard layers on quickstudy's kernels: find the patterns in its traced graph.

    fast = qs.models.accelerate(model, verbose=True)   # prints what runs on a kernel, what runs as is, and why
    fast(x)                                            # same values and derivatives as model(x), up to rounding
    print(qs.models.acceleration_report(model))        # the listing alone

The meta-learners do this themselves on every model they are given (through :class:`~quickstudy.models.Learner`):
a user's ``nn.Sequential`` Conv4 runs on the same kernels as the built-in :class:`~quickstudy.models.Conv4`.

How: ``torch.fx`` traces the model's ``forward`` into a graph whose leaves are the standard layers
(``torch.nn`` modules and quickstudy's :class:`~quickstudy.models.TaskBatchNorm`); every pattern of
:mod:`quickstudy.models.fast_path` found in it (convolution; batch norm -> 2x2 max-pool -> ReLU in either order;
batch norm -> pool; batch norm; a lone 2x2 pool; ReLU as a module, ``F.relu``, ``torch.relu`` or ``.relu()``) is
replaced by a call of the matching op, which takes the layer's own module, so its parameters, buffers and
training mode are read at every call. Everything else runs as the model wrote it. The traced program is a
separate ``GraphModule`` that shares the model's layer objects: the model, its ``forward``, its parameters and
its ``state_dict`` keys are untouched, and ``torch.func.functional_call`` on the program reads the tensors it is
given. Python control flow on ``self.training`` is fixed when tracing, so a program is traced per combination
of the modules' training modes (train / eval); other Python values the forward reads (a plain float attribute
changed between calls, say) are fixed when tracing too: pass such a model through
``accelerate(model, kernels="none")``. A model in which no pattern matches runs as it is (no program). A model ``torch.fx`` cannot trace (data-dependent control
flow) runs as it is, and the listing says why. Forward hooks of replaced layers do not fire in the program.
"""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .batchnorm import TaskBatchNorm
from .fast_path import (conv_op, gemm_conv_applies, is_pool2x2, norm_op, norm_pool_op, norm_pool_relu_op,
                        norm_refusal, pool_op, resolve_kernels)

__all__ = ["AccelerationReport", "Accelerated", "accelerate", "acceleration_report", "build_program",
           "runs_own_kernels"]

_LOG = logging.getLogger("quickstudy.accelerate")
_RELU_FUNCTIONS = (F.relu, torch.relu)
#: layers that have no faster kernel here (they run as torch's own, which is the fastest there is)
_NO_KERNEL_NEEDED = (nn.Linear, nn.Flatten, nn.Identity, nn.ReLU, nn.Dropout)


def runs_own_kernels(module: nn.Module) -> bool:
    """Whether ``module.forward`` takes ``backward_once`` (the built-in Conv4, an :class:`Accelerated` model):
    it runs its own kernels, so it is called as it is."""
    return "backward_once" in inspect.signature(type(module).forward).parameters


@dataclass
class LayerEntry:
    """One line of the listing: the layer(s), and the kernel that runs them or why none does."""

    names: tuple[str, ...]
    layers: str
    accelerated: bool
    how: str


@dataclass
class AccelerationReport:
    """What :func:`build_program` did with a model: ``entries`` per layer or pattern, in graph order."""

    model: str
    traced: bool
    reason: str | None = None
    entries: list[LayerEntry] = field(default_factory=list)

    @property
    def accelerated(self) -> list[LayerEntry]:
        return [e for e in self.entries if e.accelerated]

    @property
    def not_accelerated(self) -> list[LayerEntry]:
        return [e for e in self.entries if not e.accelerated]

    def __str__(self) -> str:
        if not self.traced:
            return f"{self.model}: not accelerated, runs as it is ({self.reason})"
        lines = [f"{self.model}: {len(self.accelerated)} pattern(s) on quickstudy's kernels, "
                 f"{len(self.not_accelerated)} layer(s) as they are"]
        for e in self.entries:
            mark = "kernel" if e.accelerated else "as is "
            lines.append(f"  [{mark}] {', '.join(e.names) or '-'}: {e.layers} -> {e.how}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- tracing


_TRACING = threading.Lock()


class _Tracer(fx.Tracer):
    """Standard layers, quickstudy's batch norm and models with their own kernels are leaves; a user's own
    modules are traced through."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, TaskBatchNorm) or runs_own_kernels(m) or super().is_leaf_module(m, module_qualified_name)


class _Graph:
    """The traced graph with the lookups the pattern matcher needs."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model, self.graph = model, graph

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.model.get_submodule(node.target) if node.op == "call_module" else None

    def only_user(self, node: fx.Node) -> fx.Node | None:
        return next(iter(node.users)) if len(node.users) == 1 else None

    def is_relu(self, node: fx.Node | None) -> bool:
        if node is None or len(node.args) != 1:
            return False
        if node.op == "call_module":
            return type(self.module(node)) is nn.ReLU
        if node.op == "call_function":
            return node.target in _RELU_FUNCTIONS and set(node.kwargs) <= {"inplace"}
        return node.op == "call_method" and node.target in ("relu", "relu_") and not node.kwargs

    def pool_of(self, node: fx.Node | None) -> tuple[bool, nn.Module | None]:
        """``(is a 2x2 max-pool, its module or None for F.max_pool2d(x, 2))``."""
        if node is None:
            return False, None
        if node.op == "call_module":
            module = self.module(node)
            return is_pool2x2(module), module
        if node.op == "call_function" and node.target is F.max_pool2d:
            kernel = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
            plain = len(node.args) <= 2 and set(node.kwargs) <= {"kernel_size"}
            return plain and kernel in (2, (2, 2)), None
        return False, None


def _describe(node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        detail = module.extra_repr()
        return f"{type(module).__name__}({detail[:60]}{'...' if len(detail) > 60 else ''})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target}()" if node.op == "call_function" else f".{target}()"


def _replace(graph: fx.Graph, chain: list[fx.Node], op, args: tuple) -> None:
    """Replace the nodes ``chain`` (each the only user of the one before) by ``op(*args)``."""
    graph._quickstudy_erased.update(chain)
    with graph.inserting_after(chain[-1]):
        new = graph.call_function(op, args)
    chain[-1].replace_all_uses_with(new)
    for node in reversed(chain):
        graph.erase_node(node)


def _backward_once_input(graph: fx.Graph) -> fx.Node:
    """A ``backward_once=False`` input after the model's own inputs."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_after(placeholders[-1]):
        return graph.placeholder("backward_once", default_value=False)


def _rewrite(model: nn.Module, graph: fx.Graph, kernels: frozenset[str], report: AccelerationReport) -> None:
    view = _Graph(model, graph)
    graph._quickstudy_erased = set()  # the nodes replaced so far
    once = _backward_once_input(graph)
    fused, lean = "fused_tail" in kernels, "lean_pool" in kernels
    gemm, channels_last, closed_form = "gemm_conv" in kernels, "channels_last" in kernels, "batch_norm" in kernels

    def entry(chain: list[fx.Node], done: bool, how: str) -> None:
        names = tuple(str(n.target) for n in chain if n.op == "call_module")
        layers = " -> ".join(_describe(n, view.module(n)) for n in chain)
        report.entries.append(LayerEntry(names, layers, done, how))

    def attr(node: fx.Node | None):
        if node is None or node.op != "call_module":
            return None
        with graph.inserting_before(node):
            return graph.get_attr(node.target)

    for node in list(graph.nodes):
        if node in graph._quickstudy_erased or node.op not in ("call_module", "call_function", "call_method"):
            continue  # erased as part of an earlier pattern, or an input / output
        module = view.module(node)
        if node.op != "call_module":  # tensor operations run as written; a lone F.max_pool2d(x, 2) has a kernel
            if lean and view.pool_of(node)[0]:
                entry([node], True, "lean 2x2 max-pool (lean_pool)")
                _replace(graph, [node], pool_op, (node.args[0], None, True))
            continue
        if runs_own_kernels(module):
            node.kwargs = {**node.kwargs, "backward_once": once}
            entry([node], True, f"its own kernels ({type(module).__name__}.forward takes backward_once)")
        elif isinstance(module, nn.Conv2d):
            if type(module) is not nn.Conv2d:
                entry([node], False, f"a subclass of nn.Conv2d ({type(module).__name__}): its forward may differ")
            elif gemm or channels_last:
                how = "one matrix product (gemm_conv), channels-last output" \
                    if gemm and gemm_conv_applies(module) else "torch's convolution, channels-last output"
                _replace(graph, [node], conv_op, (node.args[0], attr(node), gemm, channels_last))
                entry([node], True, how)
            else:
                entry([node], False, "kernels 'gemm_conv' and 'channels_last' are off")
        elif isinstance(module, TaskBatchNorm) or type(module) is nn.BatchNorm2d:
            _rewrite_norm(view, node, module, once, fused, lean, closed_form, entry, attr)
        elif is_pool2x2(module):
            if lean:
                _replace(graph, [node], pool_op, (node.args[0], attr(node), True))
                entry([node], True, "lean 2x2 max-pool (lean_pool)")
            else:
                entry([node], False, "kernel 'lean_pool' is off")
        elif isinstance(module, _NO_KERNEL_NEEDED):
            entry([node], False, "no kernel needed: torch's own is the fastest there is")
        elif isinstance(module, nn.MaxPool2d):
            entry([node], False, "no kernel: only 2x2 windows with stride 2 are served")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            entry([node], False, f"no kernel for {type(module).__name__} (only nn.BatchNorm2d)")
        else:
            entry([node], False, f"no kernel for {type(module).__name__}")


def _rewrite_norm(view: _Graph, node: fx.Node, norm: nn.Module, once, fused: bool, lean: bool, closed_form: bool,
                  entry, attr) -> None:
    refusal = norm_refusal(norm)
    if refusal is not None:
        entry([node], False, refusal)
        return
    first = view.only_user(node)
    second = view.only_user(first) if first is not None else None
    first_pool, second_pool = view.pool_of(first)[0], view.pool_of(second)[0]
    x = node.args[0]
    if (fused or lean) and ((first_pool and view.is_relu(second)) or (view.is_relu(first) and second_pool)):
        pool_node = first if first_pool else second
        chain = [node, first, second]
        how = ("fused batch norm -> max-pool -> ReLU where the graph is backpropagated once (fused_tail), "
               "lean batch norm -> max-pool elsewhere (lean_pool)") if fused and lean else \
            ("fused_tail" if fused else "lean batch norm -> max-pool, then ReLU (lean_pool)")
        entry(chain, True, how)
        _replace(view.graph, chain, norm_pool_relu_op,
                 (x, attr(node), attr(pool_node) if pool_node.op == "call_module" else None, once, fused, lean))
    elif lean and first_pool:
        entry([node, first], True, "lean batch norm -> max-pool (lean_pool)")
        _replace(view.graph, [node, first], norm_pool_op,
                 (x, attr(node), attr(first) if first.op == "call_module" else None, True))
    elif closed_form:
        entry([node], True, "batch norm with a closed-form double backward (batch_norm)")
        _replace(view.graph, [node], norm_op, (x, attr(node)))
    else:
        entry([node], False, "kernel 'batch_norm' is off")


def _adopt_missing(program: fx.GraphModule, model: nn.Module) -> None:
    """Give the program every parameter and buffer of the model under the same name (also those its forward
    does not use), so that ``functional_call`` takes the model's whole parameter dict."""
    have = {name for name, _ in program.named_parameters(remove_duplicate=False)}
    have |= {name for name, _ in program.named_buffers(remove_duplicate=False)}
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        if name in have:
            continue
        *path, leaf = name.split(".")
        owner = program
        for atom in path:
            if not hasattr(owner, atom):
                owner.add_module(atom, nn.Module())
            owner = getattr(owner, atom)
        if isinstance(tensor, nn.Parameter):
            owner.register_parameter(leaf, tensor)
        else:
            owner.register_buffer(leaf, tensor)


def build_program(model: nn.Module, kernels: str | Iterable[str] = "auto") -> tuple[fx.GraphModule | None,
                                                                                      AccelerationReport]:
    """``(program, report)``: the model's traced graph with its patterns on the kernels (``None`` where it cannot
    be traced or nothing matched), and the listing. ``program(x, backward_once=False)``."""
    kernels = resolve_kernels("accelerate", kernels)
    name = type(model).__name__
    if runs_own_kernels(model):
        report = AccelerationReport(name, False, "its forward takes backward_once: it runs its own kernels")
        return None, report
    try:
        with _TRACING:  # one trace at a time: torch.fx patches module calls process-wide while it traces
            graph = _Tracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any trace failure means: run the model as it is
        reason = f"torch.fx cannot trace its forward: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return None, AccelerationReport(name, False, reason)
    report = AccelerationReport(name, True)
    _rewrite(model, graph, kernels, report)
    if not report.accelerated:
        return None, report
    graph.lint()
    program = fx.GraphModule(model, graph, class_name=f"Accelerated{name}")
    _adopt_missing(program, model)
    _LOG.debug("%s", report)
    return program, report


def acceleration_report(model: nn.Module, kernels: str | Iterable[str] = "auto") -> AccelerationReport:
    """What :func:`accelerate` would run on a kernel, what as it is, and why (``print`` it)."""
    return build_program(model, kernels)[1]


def _modes(model: nn.Module) -> tuple[bool, ...]:
    return tuple(m.training for m in model.modules())


class Accelerated(nn.Module):
    """``model`` with its patterns on quickstudy's kernels (:func:`accelerate`). It holds the model's own
    parameter, buffer and submodule tables, so ``state_dict()``, ``load_state_dict``, ``parameters()``,
    ``train()``/``eval()`` and ``.to()`` act on the model itself, under the same names."""

    def __init__(self, model: nn.Module, kernels: str | Iterable[str] = "auto") -> None:
        super().__init__()
        if isinstance(model, Accelerated):
            model = model.model
        self._parameters, self._buffers, self._modules = model._parameters, model._buffers, model._modules
        self._non_persistent_buffers_set = model._non_persistent_buffers_set
        object.__setattr__(self, "model", model)  # not registered: its tables already are
        object.__setattr__(self, "kernels", resolve_kernels("accelerate", kernels))
        object.__setattr__(self, "_programs", {})
        self.training = model.training

    def program(self) -> tuple[fx.GraphModule | None, AccelerationReport]:
        """The program for the modules' current training modes (traced on first use of those modes)."""
        key = _modes(self.model)
        if key not in self._programs:
            self._programs[key] = build_program(self.model, self.kernels)
        return self._programs[key]

    @property
    def report(self) -> AccelerationReport:
        return self.program()[1]

    def forward(self, *args: Any, backward_once: bool = False, **kwargs: Any) -> Tensor:
        program, _ = self.program()
        if program is None:
            return self.model(*args, **kwargs)
        # the model's tensors as they are now (torch.func.functional_call on this module swaps them in the
        # model's tables, which the program's own references would not see)
        tensors = dict(self.model.named_parameters(remove_duplicate=False))
        tensors.update(self.model.named_buffers(remove_duplicate=False))
        return functional_call(program, tensors, args, {**kwargs, "backward_once": backward_once}, strict=False)

    def train(self, mode: bool = True) -> "Accelerated":
        self.model.train(mode)
        self.training = mode
        return self

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_programs"] = {}  # traced programs hold the original's layers: a copy traces its own
        return state

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("model")
            if model is None:
                raise
            return getattr(model, name)  # the model's own attributes (ways, feature_dim, ...)

    def extra_repr(self) -> str:
        return f"{type(self.model).__name__}, kernels={sorted(self.kernels)}"


def accelerate(model: nn.Module, kernels: str | Iterable[str] = "auto", verbose: bool = False) -> Accelerated:
    """``model`` with the patterns of standard layers that it contains on quickstudy's kernels (see the module
    docstring); ``verbose`` prints the listing. ``kernels="none"`` runs the model as it is (the meta-learners then
    leave it so too)."""
    fast = Accelerated(model, kernels)
    if verbose:
        print(fast.report)
    return fast

