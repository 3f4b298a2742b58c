"""Tasks: the TaskBatch every algorithm consumes, and the families that produce it."""

from .batch import Task, TaskBatch
from .sampler import EpisodeIndices, EpisodeSampler, FixedEpisodes
from .sinusoid import Sinusoid

__all__ = ["Task", "TaskBatch", "EpisodeSampler", "EpisodeIndices", "FixedEpisodes", "Sinusoid"]
