"""Training: the meta-training loop, evaluation with confidence intervals, checkpoints, logs, reports."""

from .callbacks import (Callback, DivergenceError, DivergenceMonitor, DivergenceWarning, History, MetricsLogger,
                        ProgressBar, TimeLimit)
from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .evaluate import EvalResult, evaluate, evaluate_regression_steps
from .logging import CSV_COLUMNS, CSVLogger, TensorBoardLogger, read_csv
from .metrics import confusion_matrix, macro_prf, macro_prf_from_confusion, mean_ci95
from .report import make_report
from .trainer import Trainer, seed_everything
from .update import GradientUpdate, NonFiniteLossError

__all__ = [
    "Trainer",
    "History",
    "Callback",
    "TimeLimit",
    "ProgressBar",
    "MetricsLogger",
    "DivergenceMonitor",
    "DivergenceWarning",
    "DivergenceError",
    "GradientUpdate",
    "NonFiniteLossError",
    "seed_everything",
    "evaluate",
    "evaluate_regression_steps",
    "EvalResult",
    "save_checkpoint",
    "load_checkpoint",
    "get_rng_state",
    "set_rng_state",
    "make_report",
    "mean_ci95",
    "macro_prf",
    "macro_prf_from_confusion",
    "confusion_matrix",
    "CSVLogger",
    "TensorBoardLogger",
    "CSV_COLUMNS",
    "read_csv",
]
