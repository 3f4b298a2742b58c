"""Experiment configuration: one YAML file per experiment, validated before anything runs.

Unknown keys and wrong types fail with the key's dotted name. ``model`` and ``algorithm`` take
their constructor's keyword arguments beside ``name``; those are checked against the constructor's
signature and annotations.

Example (``configs/omniglot/maml-5w1s.yaml``)::

    name: maml-omniglot-5w1s
    reference: {source: "Finn et al. 2017, Table 1", metric: accuracy, value: 98.7, ci95: 0.4}
    protocol: "Vinyals split, rotations as classes, transductive batch norm, 600 test episodes"
    data: {dataset: omniglot, protocol: vinyals}
    task: {ways: 5, shots: 1, queries: 15, meta_batch: 32}
    model: {name: conv4, stride_variant: true}
    algorithm: {name: maml, inner_lr: 0.4, inner_steps: 1}
    train: {steps: 60000, lr: 0.001}
    eval: {episodes: 600, inner_steps: 3}
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .optim import OPTIMIZERS, SCHEDULES
from .safe_yaml import YAMLInputError
from .safe_yaml import load as load_yaml

__all__ = ["ExperimentConfig", "ConfigError", "load_config", "apply_overrides", "check_kwargs"]


_M = TypeVar("_M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True)


class Reference(_Strict):
    source: str
    metric: Literal["accuracy", "mse"] = "accuracy"
    value: float | list[float]
    ci95: float | None = None
    note: str | None = None


class DataConfig(_Strict):
    dataset: Literal["omniglot", "glyphs", "sinusoid", "folder"] = "glyphs"
    protocol: str = "vinyals"
    root: str | None = None
    image_size: int = Field(28, ge=4)
    seed: int = 0
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str = "test"
    download: bool = True


class TaskConfig(_Strict):
    ways: int = Field(5, ge=1)
    shots: int = Field(1, ge=1)
    queries: int = Field(15, ge=1)
    meta_batch: int = Field(32, ge=1)
    test_ways: int | None = Field(None, ge=1)
    test_shots: int | None = Field(None, ge=1)
    test_queries: int | None = Field(None, ge=1)


class ComponentConfig(BaseModel):
    """``name`` plus the constructor's keyword arguments (checked against its signature later)."""

    model_config = ConfigDict(extra="allow")
    name: str

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(_Strict):
    steps: int = Field(1000, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal[tuple(OPTIMIZERS)] = "adam"  # the registry's names (quickstudy.optim)
    weight_decay: float = Field(0.0, ge=0)
    # cosine: anneal to 0; linear: decay linearly to 0 (Reptile's meta step); step: x gamma every step_size
    # (default steps // 3); quickstudy.optim.SCHEDULES
    schedule: Literal[tuple(SCHEDULES)] | None = None
    step_size: int | None = Field(None, ge=1)
    gamma: float = Field(0.5, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    val_every: int = Field(500, ge=1)
    val_episodes: int = Field(100, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(10, ge=1)
    time_limit: float | None = Field(None, gt=0)  # minutes of training; stops early, validated and saved
    # bfloat16: meta-gradients under torch.autocast (faster on AVX-512 BF16 CPUs and GPUs); float32 is exact
    precision: Literal["float32", "bfloat16"] = "float32"
    # on CPU: keep freed tensors for reuse (quickstudy.kernels.cpu_allocator): no page faults, smaller resident set
    cpu_caching_allocator: bool = True


class EvalConfig(_Strict):
    episodes: int = Field(600, ge=1)
    batch_size: int = Field(16, ge=1)
    inner_steps: int | None = Field(None, ge=0)
    seed: int = 1234
    max_steps: int = Field(10, ge=0)  # regression: MSE after 0..max_steps adaptation steps


class ExperimentConfig(_Strict):
    kind: Literal["episodes"] = "episodes"  # the task kind (quickstudy.tasks.kinds); the default
    name: str = "experiment"
    description: str | None = None
    reference: Reference | list[Reference] | None = None
    protocol: str | None = None
    seed: int = 0
    device: str = "auto"
    data: DataConfig = DataConfig()
    task: TaskConfig = TaskConfig()
    model: ComponentConfig = ComponentConfig(name="conv4")
    algorithm: ComponentConfig = ComponentConfig(name="maml")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def validate(schema: type[_M], raw: Any, source: str) -> _M:
    """``raw`` checked against a config ``schema``; every problem on its own line naming ``source`` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a mapping of keys to values, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_validated(schema: type[_M], path: str | Path | None, overrides: list[str] | None, raw: dict | None,
                   default: dict | None = None) -> tuple[_M, dict]:
    """Read, override and validate against ``schema`` (every task kind's loader); returns the config and the
    resolved raw dict (to write back)."""
    raw, source = read_raw(path, overrides, raw, default=default)
    config = validate(schema, raw, source)
    return config, config.model_dump(mode="json", exclude_none=False)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``["train.steps=100", "algorithm.inner_lr=0.1"]`` applied to a raw config dict (values are YAML)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        try:
            node[parts[-1]] = load_yaml(value, f"override {item!r}")
        except YAMLInputError as error:
            raise ConfigError(str(error)) from None
    return raw


def read_raw(path: str | Path | None, overrides: list[str] | None, raw: dict | None,
             default: dict | None = None) -> tuple[Any, str]:
    """The YAML at ``path`` (or ``raw``, or ``default`` when neither is given) with ``key=value`` overrides
    applied, and the name to report errors under. Shared by every config kind (supervised, meta-RL, search).

    The file is read with :func:`quickstudy.safe_yaml.load` (no alias bombs, no duplicate keys); an empty file is
    an error, not a config of defaults."""
    source = str(path) if path is not None else "config"
    if raw is None:
        if path is None:
            raw = dict(default or {})
        else:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file {str(path)!r} does not exist")
            try:
                raw = load_yaml(path.read_text(encoding="utf-8"), source)
            except (YAMLInputError, UnicodeDecodeError) as error:
                detail = str(error) if isinstance(error, YAMLInputError) else f"{source}: not a text file ({error})"
                raise ConfigError(detail) from None
            if raw is None:
                raise ConfigError(f"{source} is empty: a config is a YAML mapping of sections, e.g. "
                                  "'train: {steps: 100}' (see configs/)")
    return apply_overrides(raw, overrides or []), source


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                raw: dict | None = None) -> tuple[ExperimentConfig, dict]:
    """Read, override and validate; returns the config and the resolved raw dict (to write back)."""
    return load_validated(ExperimentConfig, path, overrides, raw)


def check_kwargs(factory, kwargs: dict[str, Any], section: str) -> dict[str, Any]:
    """Check ``kwargs`` against ``factory``'s signature: unknown names and wrong types name the key."""
    try:  # evaluate `from __future__ import annotations` strings so types can be checked
        signature = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError):
        signature = inspect.signature(factory)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    checked = {}
    for key, value in kwargs.items():
        parameter = signature.parameters.get(key)
        if parameter is None:
            if accepts_any:
                checked[key] = value
                continue
            allowed = [n for n, p in signature.parameters.items()
                       if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("self", "model", "backbone")]
            raise ConfigError(f"unknown key '{section}.{key}' for {getattr(factory, '__name__', factory)}; "
                              f"expected one of: {', '.join(allowed)}")
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty or isinstance(annotation, str):
            checked[key] = value
            continue
        try:
            checked[key] = TypeAdapter(annotation).validate_python(value)
        except (ValidationError, TypeError) as error:
            if isinstance(error, TypeError):  # annotation pydantic cannot check (e.g. a callable)
                checked[key] = value
                continue
            raise ConfigError(f"key '{section}.{key}': expected {annotation}, got {value!r}") from None
    return checked
