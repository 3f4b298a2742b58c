"""Meta-RL speed: environment steps per second and MAML-TRPO meta-iterations per hour, quickstudy's batched
2D navigation against a straightforward per-task loop, in this process, same machine, same run.

    .venv/bin/python -m bench.rl_speed                 # the paper's sizes: 20 tasks x 20 episodes x 100 steps
    .venv/bin/python -m bench.rl_speed --quick         # smoke check: small sizes, one repeat
    .venv/bin/python -m bench.rl_speed --iterations 3 --threads 1

Rows:

* ``env``: stepping B x E episodes of H steps with random actions — ``Navigation2DVecEnv`` (one tensor op per
  step for all episodes) vs one gymnasium-style ``Navigation2DEnv`` per episode stepped in a Python loop;
* ``sampling``: the same with the 100-100 Gaussian policy choosing the actions — ``rollout`` (one batched
  policy call per step) vs the loop (one policy call per env per step);
* ``meta-iteration``: a full MAML-TRPO iteration (sample, adapt, sample, TRPO step) — batched sampling with the
  per-task gradient strategy ``loop`` (the default) and ``vmap``, vs per-task-loop sampling + ``loop``.
* with ``--halfcheetah`` (needs the mujoco extra): HalfCheetah-Dir stepped by ``MujocoVecEnv`` (``mj_step`` on
  each episode's data, over ``--threads`` threads, rewards for the batch at once) vs gymnasium's ``step`` one
  env at a time (``GymVecEnv``), for random actions (``halfcheetah-env``) and for a MAML-TRPO iteration of
  ``configs/rl/maml-trpo-halfcheetah-dir-cpu.yaml`` (``halfcheetah-iteration``; 2 x 20 x 20 x 200 steps).

Prints a table (median of --repeats) and writes bench/out/rl_speed.json with machine info and raw timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from quickstudy.experiment import machine_info  # noqa: E402
from quickstudy.rl import (Episodes, GaussianMLPPolicy, MAMLRL, Navigation2D, Navigation2DEnv,  # noqa: E402
                           load_rl_config, process_episodes, rollout)
from quickstudy.rl.experiment import build_rl, meta_iteration  # noqa: E402

CONFIG = os.path.join(os.path.dirname(HERE), "configs", "rl", "maml-trpo-navigation2d.yaml")


def env_vectorized(family: Navigation2D, tasks, episodes: int, generator) -> int:
    env = family.make_env(tasks, episodes)
    env.reset(generator)
    for _ in range(family.horizon):
        env.step(torch.rand(len(tasks), episodes, 2, generator=generator) * 2 - 1)
    return len(tasks) * episodes * family.horizon


def env_loop(family: Navigation2D, tasks, episodes: int, rng: np.random.Generator) -> int:
    for goal in tasks.numpy():
        for _ in range(episodes):
            env = Navigation2DEnv(goal, horizon=family.horizon)
            env.reset(seed=int(rng.integers(2**31)))
            for _ in range(family.horizon):
                _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2))
                if terminated or truncated:
                    break
    return len(tasks) * episodes * family.horizon


def loop_rollout(family: Navigation2D, tasks, policy, params_per_task, episodes: int, generator) -> Episodes:
    """The straightforward sampler: every task, every episode, every step on its own (policy call per step)."""
    call = torch.func.functional_call
    horizon = family.horizon
    fields = {k: [] for k in ("obs", "actions", "rewards", "mask", "logp")}
    with torch.no_grad():
        for b, goal in enumerate(tasks):
            params = params_per_task(b)
            per_task = {k: [] for k in fields}
            for _ in range(episodes):
                env = Navigation2DEnv(goal.numpy(), horizon=horizon)
                obs, _ = env.reset()
                ep = {k: [] for k in fields}
                alive = 1.0
                for _ in range(horizon):
                    o = torch.from_numpy(obs)
                    out = call(policy, params, (o,))
                    a = policy.sample(out, generator)
                    ep["obs"].append(o)
                    ep["actions"].append(a)
                    ep["logp"].append(policy.log_prob(out, a) * alive)
                    ep["mask"].append(torch.tensor(alive))
                    obs, r, terminated, _, _ = env.step(a.numpy())
                    ep["rewards"].append(torch.tensor(r * alive, dtype=torch.float32))
                    alive = 0.0 if terminated else alive
                for k in fields:
                    per_task[k].append(torch.stack(ep[k]))
            for k in fields:
                fields[k].append(torch.stack(per_task[k]))
    return Episodes(**{k: torch.stack(v) for k, v in fields.items()})


def loop_meta_iteration(learner: MAMLRL, family, config, generator) -> None:
    a, t = config.algorithm, config.train
    tasks = family.sample_tasks(t.meta_batch, generator)
    theta = {k: v.detach() for k, v in learner.params().items()}
    train = process_episodes(loop_rollout(family, tasks, learner.policy, lambda b: theta, t.episodes_per_task,
                                          generator), a.gamma, a.gae_lambda)
    fast = learner.adapt([train])
    valid = process_episodes(loop_rollout(family, tasks, learner.policy, lambda b: {k: v[b] for k, v in fast.items()},
                                          t.episodes_per_task, generator), a.gamma, a.gae_lambda)
    learner.step([train], valid)


HC_CONFIG = os.path.join(os.path.dirname(HERE), "configs", "rl", "maml-trpo-halfcheetah-dir-cpu.yaml")
HC_ENV_STEPS = 20 * 20 * 200  # random-action rows: 20 tasks x 20 episodes x 200 steps
HC_ITERATION_STEPS = 2 * 20 * 20 * 200  # the config's meta-iteration: pre- and post-adaptation sampling


def halfcheetah_rows(args) -> dict[str, list[float]]:
    """Direct ``mj_step`` stepping vs gymnasium's ``step``, for random actions and for a meta-iteration."""
    config, _ = load_rl_config(HC_CONFIG)
    family, learner = build_rl(config)
    tasks = family.sample_tasks(20, torch.Generator().manual_seed(0))

    def random_actions(make_env) -> None:
        g = torch.Generator().manual_seed(0)
        env = make_env(tasks, 20)
        env.reset(g)
        for _ in range(family.horizon):
            env.step(torch.rand(20, 20, family.action_dim, generator=g) * 2 - 1)
        env.close()

    rows = {"halfcheetah-env/direct mj_step": timed(lambda: random_actions(family.make_env), args.repeats),
            "halfcheetah-env/gymnasium step loop": timed(lambda: random_actions(family.make_gym_env), args.repeats)}
    direct = family.make_env
    for name, make_env in (("direct mj_step", direct), ("gymnasium step loop", family.make_gym_env)):
        family.make_env = make_env
        gen = torch.Generator().manual_seed(0)
        rows[f"halfcheetah-iteration/{name}"] = timed(lambda: meta_iteration(learner, family, config, gen),
                                                      args.iterations)
    family.make_env = direct
    return rows


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20, help="meta-batch B (default 20, the paper's)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per task E (default 20)")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the env and sampling rows")
    parser.add_argument("--iterations", type=int, default=2, help="timed meta-iterations per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="B=4, E=4, H=20, one repeat, one iteration")
    parser.add_argument("--halfcheetah", action="store_true", help="add the HalfCheetah rows (mujoco extra)")
    parser.add_argument("--json", default=os.path.join(HERE, "out", "rl_speed.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.episodes, args.horizon, args.repeats, args.iterations = 4, 4, 20, 1, 1
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"WARNING: load average {load_before[0]:.2f}: the machine is not idle, timings are rough",
              file=sys.stderr)
    family = Navigation2D(horizon=args.horizon)
    g = torch.Generator().manual_seed(0)
    tasks = family.sample_tasks(args.tasks, g)
    steps = args.tasks * args.episodes * args.horizon
    rows = {}

    rows["env/vectorized"] = timed(lambda: env_vectorized(family, tasks, args.episodes, g), args.repeats)
    rng = np.random.default_rng(0)
    rows["env/per-episode loop"] = timed(lambda: env_loop(family, tasks, args.episodes, rng), args.repeats)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=(100, 100))
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    rows["sampling/vectorized"] = timed(lambda: rollout(family, tasks, policy, theta, args.episodes, g,
                                                        per_task=False), args.repeats)
    rows["sampling/per-episode loop"] = timed(lambda: loop_rollout(family, tasks, policy, lambda b: theta,
                                                                   args.episodes, g), args.repeats)

    overrides = [f"train.meta_batch={args.tasks}", f"train.episodes_per_task={args.episodes}",
                 f"env.horizon={args.horizon}"]
    variants = {"meta-iteration/vectorized (grad loop)": "loop", "meta-iteration/vectorized (grad vmap)": "vmap",
                "meta-iteration/per-task loop": "loop"}
    for name, strategy in variants.items():
        config, _ = load_rl_config(CONFIG, overrides=overrides + [f"algorithm.strategy={strategy}"])
        family_c, learner = build_rl(config)
        gen = torch.Generator().manual_seed(0)
        if "per-task" in name:
            fn = lambda: loop_meta_iteration(learner, family_c, config, gen)  # noqa: E731
        else:
            fn = lambda: meta_iteration(learner, family_c, config, gen)  # noqa: E731
        rows[name] = timed(fn, args.iterations)

    if args.halfcheetah:
        rows.update(halfcheetah_rows(args))

    print()
    print(f"B={args.tasks} tasks x E={args.episodes} episodes x H={args.horizon} steps; threads={args.threads}")
    header = f"{'row':<42}{'median s':>10}{'env steps/s':>14}{'iters/hour':>12}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    summary = {}
    for name, times in rows.items():
        median = statistics.median(times)
        kind = name.split("/")[0]
        baseline = statistics.median(rows[[r for r in rows if r.startswith(kind) and "loop" in r.split("/")[1]
                                           and "grad" not in r][0]])
        entry = {"median_s": median, "times_s": times, "speedup_vs_loop": baseline / median}
        if kind == "meta-iteration":
            entry["iterations_per_hour"] = 3600 / median
            entry["env_steps_per_s"] = 2 * steps / median
        elif kind == "halfcheetah-iteration":
            entry["iterations_per_hour"] = 3600 / median
            entry["env_steps_per_s"] = HC_ITERATION_STEPS / median
        elif kind == "halfcheetah-env":
            entry["env_steps_per_s"] = HC_ENV_STEPS / median
        else:
            entry["env_steps_per_s"] = steps / median
        summary[name] = entry
        print(f"{name:<42}{median:>10.3f}{entry['env_steps_per_s']:>14,.0f}"
              f"{entry.get('iterations_per_hour', float('nan')):>12.0f}{entry['speedup_vs_loop']:>10.1f}x")
    payload = {"machine": machine_info(), "load_before": load_before, "load_after": os.getloadavg(),
               "sizes": {"tasks": args.tasks, "episodes": args.episodes, "horizon": args.horizon},
               "threads": args.threads, "rows": summary}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump(payload, handle, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
