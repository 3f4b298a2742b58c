"""quickstudy: meta-learning for PyTorch."""

__version__ = "0.1.0"

from . import tasks
from .tasks import EpisodeSampler, FixedEpisodes, Sinusoid, TaskBatch

__all__ = ["__version__", "tasks", "TaskBatch", "EpisodeSampler", "FixedEpisodes", "Sinusoid"]
