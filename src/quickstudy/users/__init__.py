"""Recommendation for new users as meta-learning: each user a task (a few ratings = the support set, the rest =
the query set), on real ratings (MovieTweetings) or your own.

* :mod:`.splits` — users split into meta-train / meta-validation / meta-test, at random or by arrival time;
* :mod:`.features`, :mod:`.dataset` — item statistics from the training ratings only, and the network's x rows;
* :mod:`.tasks` — :class:`UserTasks` (training TaskBatches) and :class:`UserEpisodes` (one user per batch);
* :mod:`.baselines` — global / item / user mean, matrix factorisation with fold-in, item-kNN;
* :mod:`.metrics`, :mod:`.evaluation` — MAE, RMSE, nDCG@3/@5 per user, means with 95% CIs, paired differences;
* :mod:`.kind` — the ``kind: users`` task kind (train / evaluate / report); :mod:`.recommend` — one new user.

The network is :class:`quickstudy.models.MeLU`; the meta-learners are the core ones (``qs.ANIL`` on its decision
layers is MeLU's local update; ``qs.MAML``, ``qs.FOMAML``, ``qs.Reptile``, ``qs.ANIL``) through the shared Trainer.
"""

from .baselines import BASELINES, ItemKNN, MatrixFactorization, TrainingRatings
from .dataset import UsersData
from .features import ItemStatistics, RowEncoder
from .metrics import ndcg_at, paired_difference, user_metrics
from .splits import UserSplit, random_split, time_split
from .tasks import Episode, UserEpisodes, UserRatings, UserTasks

__all__ = ["BASELINES", "ItemKNN", "MatrixFactorization", "TrainingRatings", "UsersData", "ItemStatistics",
           "RowEncoder", "ndcg_at", "paired_difference", "user_metrics", "UserSplit", "random_split", "time_split",
           "Episode", "UserEpisodes", "UserRatings", "UserTasks"]
