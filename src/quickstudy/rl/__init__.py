"""Meta-reinforcement learning: MAML-RL (TRPO or PPO-clipped outer step, VPG inner step) on task families
of environments (2D navigation built in; HalfCheetah-Vel/Dir and Meta-World as optional extras).

    from quickstudy.rl import MAMLRL, GaussianMLPPolicy, Navigation2D, train_rl, evaluate_rl_run
"""

from .baseline import fit_linear_baseline
from .config import RLConfig, is_rl_config, load_rl_config
from .evaluate import AdaptationResult, evaluate_adaptation
from .experiment import RLUpdate, build_rl, evaluate_rl_run, load_rl_run, meta_iteration, train_rl
from .families import (FAMILIES, Navigation2D, Navigation2DEnv, Navigation2DVecEnv, TaskFamily, VecEnv, make_family,
                       register_family)
from .maml_rl import MAMLRL, adapt_params, pg_loss
from .policies import CategoricalMLPPolicy, GaussianMLPPolicy, policy_outputs
from .returns import discounted_returns, gae
from .rollout import Episodes, process_episodes, rollout
from .trpo import backtracking_line_search, conjugate_gradient

__all__ = [
    "MAMLRL", "adapt_params", "pg_loss", "GaussianMLPPolicy", "CategoricalMLPPolicy", "policy_outputs",
    "TaskFamily", "VecEnv", "FAMILIES", "register_family", "make_family", "Navigation2D", "Navigation2DEnv",
    "Navigation2DVecEnv", "Episodes", "rollout", "process_episodes", "discounted_returns", "gae",
    "fit_linear_baseline", "conjugate_gradient", "backtracking_line_search", "AdaptationResult",
    "evaluate_adaptation", "RLConfig", "load_rl_config", "is_rl_config", "build_rl", "meta_iteration", "train_rl",
    "load_rl_run", "evaluate_rl_run", "RLUpdate",
]
