"""External meta-learning: search over meta-learners, task meta-features, warm-started recommendations.

* :func:`run_search` -- Optuna TPE search over a config's ``search:`` space, pruned on meta-validation
  accuracy, shared storage for many workers (``quickstudy search``);
* :func:`extract_metafeatures` -- pymfe meta-features of a tabular data set with a time budget;
  :func:`episode_features` -- a few-shot task's representation from its support embeddings;
* :data:`PORTFOLIO`, :func:`load_knowledge_base`, the recommenders (:class:`KNNRecommender`,
  :class:`SurrogateRecommender`, ...), the sequential :class:`ScenarioSearch` and :func:`leave_one_out` --
  warm-starting scikit-learn model selection from 131 PMLB data sets (``quickstudy recommend``).

Only numpy, pydantic and PyYAML are imported here; Optuna, scikit-learn, pandas and pymfe are
imported by the functions that use them.
"""

from .advise import recommend_for_arrays, recommend_for_file
from .evaluate import leave_one_out
from .knowledge import KnowledgeBase, load_knowledge_base
from .metafeatures import MetaFeatures, episode_features, extract_metafeatures
from .portfolio import PORTFOLIO, Configuration, make_estimator
from .recommend import (AverageRankRecommender, KNNRecommender, RegretPortfolioRecommender, StaticPortfolioRecommender,
                        SurrogateRecommender)
from .recommenders import RECOMMENDERS, make_recommender
from .search import PruningCallback, run_search
from .space import SearchSpace, load_search_config
from .task_select import EpisodeSelector, embed_support
from .warm_search import ScenarioSearch

__all__ = [
    "run_search", "PruningCallback", "SearchSpace", "load_search_config",
    "extract_metafeatures", "MetaFeatures", "episode_features", "EpisodeSelector", "embed_support",
    "PORTFOLIO", "Configuration", "make_estimator", "KnowledgeBase", "load_knowledge_base",
    "KNNRecommender", "SurrogateRecommender", "AverageRankRecommender", "StaticPortfolioRecommender",
    "RegretPortfolioRecommender", "ScenarioSearch", "RECOMMENDERS", "make_recommender", "leave_one_out", "recommend_for_file",
    "recommend_for_arrays",
]
