"""The search space: a ``search:`` section added to a normal experiment config.

A search config is an experiment config (``quickstudy train`` would accept it without ``search:``)
plus a section that names dotted config keys and their distributions::

    search:
      direction: maximize           # maximize | minimize
      metric: accuracy              # a validation metric the Trainer reports (accuracy, loss, f1, mse)
      sampler: {seed: 0, n_startup_trials: 4}     # Optuna TPE
      pruner: {name: median, n_startup_trials: 2, n_warmup_steps: 0}   # median | percentile |
                                                  # successive_halving | hyperband | none
      params:
        algorithm.name: {type: categorical, choices: [protonet, maml]}
        algorithm.inner_lr: {type: float, low: 0.05, high: 1.0, log: true, when: {algorithm.name: [maml]}}
        model.hidden: {type: int, low: 16, high: 64, step: 16}
        train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}

``when`` makes a parameter conditional (structure search): it is sampled only when every named key
has one of the listed values in this trial (or in the base config when that key is not searched).
Every problem fails with the parameter's dotted name: unknown distribution fields, ``low >= high``,
a log scale with ``low <= 0``, empty ``choices``, a key the experiment config does not have, or a
model/algorithm argument the named constructor does not take (checked for every algorithm and model
the space can choose).
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import ConfigError, apply_overrides, check_kwargs, load_config, read_raw

__all__ = ["FloatParam", "IntParam", "CategoricalParam", "SearchSpace", "load_search_config", "sample_overrides",
           "active_params", "apply_values", "set_dotted", "get_dotted"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Param(_Strict):
    when: dict[str, list[Any]] | None = None


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "FloatParam":
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("a log-scale float cannot have a step")
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "IntParam":
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("a log-scale int must have step 1")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


def _check_range(low: float, high: float, log: bool) -> None:
    if low >= high:
        raise ValueError(f"low ({low}) must be less than high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0, got {low}")


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class SamplerConfig(_Strict):
    seed: int = 0
    n_startup_trials: int = Field(4, ge=0)


class PrunerConfig(_Strict):
    name: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    percentile: float = Field(50.0, gt=0, lt=100)


class SearchSpace(_Strict):
    """The ``search:`` section, validated."""

    direction: Literal["maximize", "minimize"] = "maximize"
    metric: str = "accuracy"
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    params: dict[str, Param] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_when(self) -> "SearchSpace":
        for key, param in self.params.items():
            if "." not in key:
                raise ValueError(f"parameter {key!r} must be a dotted config key such as 'train.lr'")
            for other in param.when or {}:
                if other == key:
                    raise ValueError(f"parameter {key!r} cannot depend on itself")
        return self


def get_dotted(raw: dict, key: str, default: Any = None) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"search parameter {key!r}: '{part}' is not a section")
    node[parts[-1]] = value


def active_params(space: SearchSpace, chosen: dict[str, Any], base: dict) -> list[str]:
    """Parameter names whose ``when`` conditions hold for the values ``chosen`` so far (else the base config)."""
    active = []
    for key, param in space.params.items():
        ok = True
        for other, allowed in (param.when or {}).items():
            value = chosen[other] if other in chosen else get_dotted(base, other)
            if value not in allowed:
                ok = False
                break
        if ok:
            active.append(key)
    return active


def sample_overrides(space: SearchSpace, base: dict, suggest) -> dict[str, Any]:
    """Values for the active parameters, in declaration order; ``suggest(name, param)`` draws one
    (an Optuna trial's ``suggest_*`` in the search, a fixed rule in validation)."""
    chosen: dict[str, Any] = {}
    for key, param in space.params.items():
        if key in active_params(space, chosen, base):
            chosen[key] = suggest(key, param)
    return chosen


def apply_values(base: dict, values: dict[str, Any]) -> dict:
    """The base config with the trial's ``values`` set. When a trial changes ``model.name`` or
    ``algorithm.name``, the base section's other arguments that the new constructor does not take are
    dropped (a base ``algorithm: {name: maml, inner_lr: 0.4}`` searched over protonet keeps working);
    searched arguments are never dropped, so a misplaced one still fails with its name."""
    import inspect

    from ..algorithms import ALGORITHMS
    from ..models import MODELS

    raw = copy.deepcopy(base)
    for key, value in values.items():
        set_dotted(raw, key, value)
    for section, registry in (("model", MODELS), ("algorithm", ALGORITHMS)):
        name = get_dotted(raw, f"{section}.name")
        if name == get_dotted(base, f"{section}.name") or name not in registry:
            continue
        accepted = inspect.signature(registry[name]).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        node = raw[section]
        for arg in list(node):
            if arg != "name" and f"{section}.{arg}" not in values and arg not in accepted and not takes_any:
                del node[arg]
    return raw


def _format(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"] if not (isinstance(p, str) and p in ("float", "int", "categorical")))
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key 'search.{key}'")
        else:
            lines.append(f"{source}: key 'search.{key}': {item['msg']}")
    return "\n".join(lines)


def _corner_values(param) -> list[Any]:
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    return [param.low, param.high]


def _validate_against(space: SearchSpace, base: dict, source: str) -> None:
    """Every reachable combination of the structural choices (``*.name``) with each parameter at its bounds
    must give a valid experiment config and constructor arguments."""
    from ..algorithms import ALGORITHMS
    from ..models import MODELS

    structural = [k for k, p in space.params.items() if isinstance(p, CategoricalParam) and k.endswith(".name")]
    combos = itertools.product(*[space.params[k].choices for k in structural]) if structural else [()]
    for combo in combos:
        fixed = dict(zip(structural, combo))
        for corner in (0, -1):
            def suggest(key, param, fixed=fixed, corner=corner):
                return fixed[key] if key in fixed else _corner_values(param)[corner]
            chosen = sample_overrides(space, base, suggest)
            raw = apply_values(base, chosen)
            where = f"{source} (search with {', '.join(f'{k}={v!r}' for k, v in chosen.items())})"
            try:
                config, _ = load_config(raw=raw)
            except ConfigError as error:
                raise ConfigError(f"{where}: {str(error).replace('config: ', '', 1)}") from None
            for section, registry in (("model", MODELS), ("algorithm", ALGORITHMS)):
                component = getattr(config, section)
                if component.name not in registry:
                    raise ConfigError(f"{where}: key '{section}.name': {component.name!r} is not one of "
                                      f"{', '.join(registry)}")
                try:
                    check_kwargs(registry[component.name], component.kwargs(), section)
                except ConfigError as error:
                    raise ConfigError(f"{where}: {error}") from None


def load_search_config(path: str | Path | None = None, raw: dict | None = None,
                       overrides: list[str] | None = None) -> tuple[SearchSpace, dict]:
    """Read a search config: the validated ``search:`` section and the experiment config without it (raw)."""
    if raw is None and path is None:
        raise ValueError("load_search_config needs a path or a raw dict")
    raw, source = read_raw(path, None, raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a mapping of keys to values")
    raw = apply_overrides(raw, overrides or [])
    if "search" not in raw:
        raise ConfigError(f"{source}: no 'search:' section; a search config is an experiment config plus "
                          "search: {params: {dotted.key: {type: float|int|categorical, ...}}}")
    base = {k: v for k, v in raw.items() if k != "search"}
    try:
        space = SearchSpace.model_validate(raw["search"] or {})
    except ValidationError as error:
        raise ConfigError(_format(error, source)) from None
    load_config(path, raw=base)  # the base experiment itself must be valid (errors name the key)
    _validate_against(space, base, source)
    return space, base
