"""quickstudy: meta-learning for PyTorch.

    import quickstudy as qs
    train = qs.data.Omniglot(split="train")                 # or qs.data.Glyphs(split="train"), no download
    sampler = qs.EpisodeSampler(train, ways=5, shots=1, queries=15, batch_size=32, seed=0)
    maml = qs.MAML(qs.models.Conv4(in_channels=1, ways=5), inner_lr=0.4, inner_steps=1)
    qs.Trainer(maml, sampler, steps=1000, out="runs/maml").fit()
    print(qs.evaluate(maml, qs.EpisodeSampler(qs.data.Omniglot(split="test"), 5, 1, 15, 16, seed=1)))
"""

__version__ = "0.1.0"

from . import _deprecated, algorithms, data, kernels, models, tasks, training
from .algorithms import ANIL, FOMAML, MAML, FineTune, MetaLearner, MetaSGD, ProtoNet, Reptile
from .algorithms import (BOIL, IMAML, MAMLPlusPlus, MatchingNet, MetaOptNet, ProtoMAML, RelationNet, SimpleShot,
                         TransductiveFineTune)
from .tasks import EpisodeSampler, FixedEpisodes, Sinusoid, TaskBatch
from .training import (
    EvalResult,
    NonFiniteLossError,
    Trainer,
    evaluate,
    evaluate_regression_steps,
    load_checkpoint,
    make_report,
)


_deprecated.install()


def __getattr__(name: str):
    # quickstudy.rl (gymnasium), quickstudy.automl (the automl extra) and quickstudy.text (the text extra) load
    # on first use, so `import quickstudy` stays light
    import importlib

    if name in ("rl", "automl", "text"):
        return importlib.import_module(f".{name}", __name__)
    if name in ("cpu_allocator", "native"):
        return _deprecated.moved(f"{__name__}.{name}")
    if name == "enable_caching_allocator":  # a process-wide switch: it belongs with the kernels, not the top level
        return _deprecated.moved(f"{__name__}.cpu_allocator").enable_caching_allocator
    raise AttributeError(f"module 'quickstudy' has no attribute {name!r}")


__all__ = [
    "__version__",
    "algorithms", "data", "kernels", "models", "tasks", "training", "rl", "automl", "text",
    "TaskBatch", "EpisodeSampler", "FixedEpisodes", "Sinusoid",
    "MetaLearner", "MAML", "FOMAML", "MetaSGD", "ANIL", "Reptile", "ProtoNet", "FineTune",
    "MetaOptNet", "MatchingNet", "RelationNet", "IMAML", "MAMLPlusPlus", "BOIL", "ProtoMAML", "SimpleShot",
    "TransductiveFineTune",
    "Trainer", "evaluate", "evaluate_regression_steps", "EvalResult", "NonFiniteLossError",
    "load_checkpoint", "make_report",
]
