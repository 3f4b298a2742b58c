"""Meta-learning algorithms, one short file per family, all behind :class:`MetaLearner`'s interface.

=====================  ========================================  ================
name                   class                                     file
=====================  ========================================  ================
maml                   :class:`MAML` (second order)              maml.py
fomaml                 :class:`FOMAML`                           maml.py
metasgd                :class:`MetaSGD`                          metasgd.py
anil                   :class:`ANIL`                             anil.py
reptile                :class:`Reptile`                          reptile.py
protonet               :class:`ProtoNet`                         protonet.py
finetune               :class:`FineTune` (Baseline/Baseline++)   finetune.py
matchingnet            :class:`MatchingNet`                      matchingnet.py
relationnet            :class:`RelationNet`                      relationnet.py
metaoptnet             :class:`MetaOptNet` (SVM; ridge: R2-D2)   metaoptnet.py
imaml                  :class:`IMAML`                            imaml.py
mamlpp                 :class:`MAMLPlusPlus`                     mamlpp.py
boil                   :class:`BOIL`                             boil.py
protomaml              :class:`ProtoMAML`                        protomaml.py
simpleshot             :class:`SimpleShot`                       simpleshot.py
transductive_finetune  :class:`TransductiveFineTune`             transductive.py
=====================  ========================================  ================

``base.py`` holds the contract and the kit every file shares, ``gradient.py`` the shell of the MAML family,
``metric.py`` the shell of the methods without an inner loop (Matching and Relation Networks, MetaOptNet),
``inner_loop.py`` the MAML family's differentiable inner SGD loop, and ``execution.py`` how the tasks of a batch run (a loop,
``torch.func.vmap`` or worker threads), decided in one place.
"""

from __future__ import annotations

from torch import nn

from .anil import ANIL
from .boil import BOIL
from .base import AdaptedPredictor, MetaLearner, Predictor
from .execution import STRATEGIES
from .finetune import CosineClassifier, FineTune
from .gradient import GradientMetaLearner
from .imaml import IMAML
from .inner_loop import sgd_inner_loop
from .maml import FOMAML, MAML
from .mamlpp import MAMLPlusPlus
from .matchingnet import MatchingNet
from .metaoptnet import MetaOptNet
from .metasgd import MetaSGD
from .metric import MetricMetaLearner
from .protomaml import ProtoMAML
from .protonet import ProtoNet
from .relationnet import RelationNet
from .reptile import Reptile
from .simpleshot import SimpleShot
from .transductive import TransductiveFineTune

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "AdaptedPredictor",
    "BOIL",
    "CosineClassifier",
    "FOMAML",
    "FineTune",
    "GradientMetaLearner",
    "IMAML",
    "MAML",
    "MAMLPlusPlus",
    "MatchingNet",
    "MetaLearner",
    "MetaOptNet",
    "MetaSGD",
    "MetricMetaLearner",
    "Predictor",
    "ProtoMAML",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "SimpleShot",
    "TransductiveFineTune",
    "STRATEGIES",
    "build_algorithm",
    "sgd_inner_loop",
]

#: name -> class, for configuration files: ``ALGORITHMS[name](model, **kwargs)``.
ALGORITHMS: dict[str, type[MetaLearner]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "metasgd": MetaSGD,
    "anil": ANIL,
    "reptile": Reptile,
    "protonet": ProtoNet,
    "finetune": FineTune,
    "matchingnet": MatchingNet,
    "relationnet": RelationNet,
    "metaoptnet": MetaOptNet,
    "imaml": IMAML,
    "mamlpp": MAMLPlusPlus,
    "boil": BOIL,
    "protomaml": ProtoMAML,
    "simpleshot": SimpleShot,
    "transductive_finetune": TransductiveFineTune,
}


def build_algorithm(name: str, model: nn.Module, **kwargs) -> MetaLearner:
    """``ALGORITHMS[name](model, **kwargs)`` with a clear error for an unknown name."""
    if name not in ALGORITHMS:
        raise ValueError(f"build_algorithm: name must be one of {', '.join(repr(n) for n in ALGORITHMS)}; got {name!r}")
    return ALGORITHMS[name](model, **kwargs)
