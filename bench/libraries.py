"""The libraries bench/speed.py compares: their names, what each worker runs, which are peers, and the issue's
reference numbers."""

from __future__ import annotations

from bench.peers import common

ALL_LIBS = ("quickstudy", "qs_loss", "qs_user", "qs_user_loss", "qs_loop", "qs_bf16", "torch_loop", "learn2learn",
            "higher", "torchopt", "parallel_metalearn", "easyfsl", "vmap")
#: the default --libs per device (qs_loop: quickstudy's leanest strategy, beside "auto": threads on CPU, vmap on CUDA)
DEFAULT_LIBS = {"cpu": ALL_LIBS, "cuda": ALL_LIBS}
#: "the fastest peer" is the fastest of these
PEER_LIBS = ("learn2learn", "higher", "torchopt", "parallel_metalearn", "easyfsl")
#: run by --python (no peers venv needed)
PROJECT_LIBS = ("quickstudy", "qs_loss", "qs_user", "qs_user_loss", "qs_loop", "qs_bf16", "torch_loop", "vmap")
#: what each worker supports (its SUPPORTS) and its LIBRARY name: the driver skips the other cells without
#: starting a process (the worker would import torch and its library only to say "skipped")
_QS = {"maml", "protonet", "reptile", "imaml", "matchingnet", "relationnet"}
LIB_SUPPORTS = {"quickstudy": _QS, "qs_loss": _QS, "qs_user": _QS, "qs_user_loss": _QS,
                "qs_loop": {"maml", "protonet", "imaml", "matchingnet", "relationnet"}, "qs_bf16": _QS,
                "torch_loop": {"maml", "protonet", "reptile", "imaml"}, "learn2learn": {"maml", "protonet"},
                "higher": {"maml"}, "torchopt": {"maml", "imaml"}, "parallel_metalearn": {"maml"},
                "easyfsl": {"protonet", "matchingnet", "relationnet"}, "vmap": {"maml"}}
#: the models each worker builds (the plain loop and vmap write Conv4 as functions: no ResNet-12)
LIB_MODELS = {lib: ("conv4",) if lib in ("torch_loop", "vmap", "easyfsl") else ("conv4", "resnet12")
              for lib in ALL_LIBS}
LIB_NAMES = {"quickstudy": "quickstudy", "qs_loss": "quickstudy (meta_loss)", "qs_user": "quickstudy (user model)",
             "qs_user_loss": "quickstudy (user model, meta_loss)", "qs_loop": "quickstudy (loop)",
             "qs_bf16": "quickstudy (bfloat16)", "torch_loop": "plain torch loop", "learn2learn": "learn2learn",
             "higher": "higher", "torchopt": "TorchOpt", "parallel_metalearn": "parallel-metalearn",
             "easyfsl": "easyfsl", "vmap": "torch.func vmap"}
#: tasks/s (median) from the issue, measured before quickstudy existed (2-core EPYC, torch 2.13 CPU)
ISSUE_TABLE = {
    "maml-1shot-1step-2nd": {"torch_loop": 21.3, "learn2learn": 16.4, "higher": 16.6, "torchopt": 14.4, "vmap": 4.0},
    "maml-1shot-1step-1st": {"torch_loop": 16.8, "learn2learn": 17.8, "higher": 20.6, "vmap": 4.4},
    "maml-1shot-5step-2nd": {"torch_loop": 8.3, "learn2learn": 9.1, "higher": 7.2, "torchopt": 8.3, "vmap": 3.0},
    "maml-5shot-1step-2nd": {"torch_loop": 10.6, "learn2learn": 8.5, "higher": 9.6, "torchopt": 9.5, "vmap": 2.4},
}


def has_cell(lib: str, cell: str) -> bool:
    """Whether ``lib``'s worker has the cell's algorithm and model."""
    spec = common.CELLS[cell]
    return spec.algo in LIB_SUPPORTS[lib] and spec.model in LIB_MODELS[lib]


