"""The ``text`` task kind: ``quickstudy train|eval|resume|report`` for configs that say ``kind: text``.

A run folder holds ``config.yaml`` (written by the shell), ``meta/`` (the Trainer's checkpoints and metrics.csv of
episodic meta-training, when configured), ``intent_model.pt`` (:class:`~quickstudy.text.model.IntentModel`),
``train.json`` (what was trained, minutes per stage) and ``eval.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from .._atomic import atomic_write_text
from ..data import intents
from .config import TextConfig, load_text_config

__all__ = ["NAME", "STEPS_KEY", "load_config", "train", "evaluate", "format_eval", "report", "source_data", "target_data"]

NAME = "text"
STEPS_KEY = "meta_train.steps"  # what the CLI's --steps overrides


def load_config(path=None, overrides=None, raw=None) -> tuple[TextConfig, dict]:
    return load_text_config(path, overrides, raw)


def _run_config(run_dir: Path, overrides: list[str] | None = None) -> TextConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; not a run folder")
    return load_text_config(path, overrides)[0]


# --------------------------------------------------------------------------- data of a config
def source_data(config: TextConfig) -> intents.TextDataset:
    """The labelled texts episodic meta-training may use: never the target data set (fixed-split), never the held-out
    domains (episodes). HWU64 has no full training file here: its train_10 and valid rows (all drawn from HWU64's
    training data) stand in for it."""
    root = config.data.root
    if config.protocol == "episodes" and config.episodes.target == "clinc150-held-out":
        domains = intents.clinc150_domains(root)
        unknown = sorted(set(config.data.held_out_domains) - set(domains))
        if unknown:
            raise ValueError(f"data.held_out_domains: unknown CLINC150 domains {unknown}; known: {sorted(domains)}")
        seen = [i for d, names in domains.items() if d not in config.data.held_out_domains for i in names]
        return intents.clinc150("train", root).restrict(seen, name="clinc150")
    parts = []
    for name in config.meta_train.sources:
        if name == "clinc150":
            parts.append(intents.clinc150("train", root))
        elif name == "banking77":
            parts.append(intents.banking77("train", root))
        else:
            parts.append(intents.TextDataset.concat(
                [intents.fewshot_split("hwu64", "train_10", root), intents.fewshot_split("hwu64", "valid", root)],
                "hwu64", prefix_labels=False))
    if not parts:
        raise ValueError("meta_train.sources is empty: name the data sets to meta-train on")
    return intents.TextDataset.concat(parts, "+".join(config.meta_train.sources))


def target_data(config: TextConfig, split: str) -> intents.TextDataset:
    """``split`` of the fixed-split target: ``train`` (the k-shot split, or the user's file), ``valid`` or ``test``."""
    data, root = config.data, config.data.root
    if data.dataset == "file":
        if split != "train":
            raise ValueError(f"data.dataset: file has no {split} split")
        dataset, rows = intents.read_table(data.path, data.text_column, data.label_column, return_rows=True)
        intents.check_min_examples(dataset, 2, "training", rows)
        return dataset
    name = {"train": f"train_{data.shots}", "valid": "valid", "test": "test"}[split]
    return intents.fewshot_split(data.dataset, name, root)


# --------------------------------------------------------------------------- train
def train(config: TextConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
          time_limit: float | None = None) -> None:
    """Meta-train (optional), fine-tune (optional), fit the classifier, choose the out-of-scope threshold; save."""
    from .classify import choose_threshold, fit_classifier
    from .encoder import load_encoder
    from .episodes import meta_train_encoder
    from .finetune import FinetuneSettings, contrastive_finetune
    from .model import IntentModel

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    stages: dict[str, float] = {}
    train_set = target_data(config, "train") if config.protocol == "fixed-split" else None  # bad data fails first
    encoder = load_encoder(config.encoder.name, config.encoder.max_length)
    modified = False
    summary: dict = {"kind": NAME, "protocol": config.protocol, "seed": config.seed}
    mt = config.meta_train
    if mt.steps > 0 and mt.algorithm == "anil":
        from .episodes import subsample
        from .heads import train_anil_heads

        tick = time.perf_counter()
        source = subsample(source_data(config), mt.per_intent, config.seed)
        summary["meta_train"] = train_anil_heads(
            encoder, source, config.episodes.ways, steps=mt.steps, shots=mt.shots, queries=mt.queries,
            meta_batch=mt.meta_batch, lr=mt.lr, seed=config.seed, run_dir=run_dir, progress=progress,
            time_limit=time_limit if time_limit is not None else (mt.time_limit * 60 if mt.time_limit else None))
        stages["meta_train"] = time.perf_counter() - tick
    elif mt.steps > 0:
        tick = time.perf_counter()
        from .episodes import subsample

        source = subsample(source_data(config), mt.per_intent, config.seed)
        summary["meta_train"] = meta_train_encoder(
            encoder, source, steps=mt.steps, ways=mt.ways, shots=mt.shots, queries=mt.queries,
            meta_batch=mt.meta_batch, lr=mt.lr, scale=mt.scale, train_last=mt.train_last, seed=config.seed,
            out=run_dir / "meta", progress=progress, resume=resume,
            time_limit=time_limit if time_limit is not None else (mt.time_limit * 60 if mt.time_limit else None))
        stages["meta_train"] = time.perf_counter() - tick
        modified = True
    if config.protocol == "episodes":
        IntentModel(encoder, _empty_classifier(encoder.dim), [], None, modified).save(run_dir)
        _write_summary(run_dir, summary, stages, started, cpu_started)
        return
    ids = encoder.tokenize(list(train_set.texts))
    labels = torch.as_tensor(train_set.labels)
    head = None
    ft = config.finetune
    if ft.epochs > 0:
        tick = time.perf_counter()
        settings = FinetuneSettings(**ft.model_dump())
        head = contrastive_finetune(encoder.module, ids, labels, settings, seed=config.seed, progress=progress)
        stages["finetune"] = time.perf_counter() - tick
        modified = True
    tick = time.perf_counter()
    model = IntentModel(encoder, _empty_classifier(encoder.dim), list(train_set.classes), None, modified,
                        _frozen_below(config, len(encoder.module.layers())))
    z = model.embed(train_set.texts, progress)
    model.classifier = fit_classifier(config.classifier.name, z, labels, len(train_set.classes), C=config.classifier.C,
                                      scale=ft.scale, head=head, seed=config.seed)
    stages["classifier"] = time.perf_counter() - tick
    if config.oos.enabled:
        tick = time.perf_counter()
        if config.oos.threshold is not None:
            model.threshold = config.oos.threshold
        else:
            texts, y = _oos_split(config, "valid", model.classes)
            probs = model.probabilities(texts, progress)
            top, predicted = probs.max(dim=1)
            model.threshold = choose_threshold(top, predicted, y, config.oos.criterion)
        summary["oos_threshold"] = model.threshold
        stages["oos_threshold"] = time.perf_counter() - tick
    model.save(run_dir)
    summary.update(intents=len(train_set.classes), train_texts=len(train_set))
    _write_summary(run_dir, summary, stages, started, cpu_started)


def _frozen_below(config: TextConfig, layers: int) -> int | None:
    """The first layer any stage trained (None when a stage trained them all, or nothing was trained)."""
    trained = []
    if config.meta_train.steps > 0:
        trained.append(config.meta_train.train_last)
    if config.finetune.epochs > 0:
        trained.append(config.finetune.train_last)
    if not trained or any(k is None for k in trained):
        return None
    return layers - max(trained)


def _empty_classifier(dim: int):
    from .classify import EmbeddingClassifier

    return EmbeddingClassifier(torch.zeros(0, dim), torch.zeros(0), 1.0, "none")


def _write_summary(run_dir: Path, summary: dict, stages: dict[str, float], started: float, cpu_started: float) -> None:
    summary["minutes"] = {k: round(v / 60, 3) for k, v in stages.items()}
    summary["minutes"]["total"] = round((time.perf_counter() - started) / 60, 3)
    # CPU time of this process: on a machine shared with other jobs, what the run itself consumed
    summary["cpu_minutes"] = round((time.process_time() - cpu_started) / 60, 3)
    summary["threads"] = torch.get_num_threads()
    atomic_write_text(run_dir / "train.json", json.dumps(summary, indent=2) + "\n")


def _oos_split(config: TextConfig, split: str, classes: list[str]) -> tuple[list[str], torch.Tensor]:
    """In-scope texts of the target's ``valid``/``test`` split plus CLINC150's ``oos_val``/``oos_test`` (label -1)."""
    in_scope = target_data(config, split)
    index = {c: i for i, c in enumerate(classes)}
    oos = intents.clinc150("oos_val" if split == "valid" else "oos_test", config.data.root)
    texts = list(in_scope.texts) + list(oos.texts)
    labels = [index[n] for n in in_scope.label_names] + [-1] * len(oos)
    return texts, torch.tensor(labels)


# --------------------------------------------------------------------------- evaluate
def evaluate(run_dir: Path, *, episodes: int | None = None, checkpoint: str = "best", progress: bool = True,
             overrides: list[str] | None = None) -> dict:
    """Score the run on its test data and write ``eval.json``. ``checkpoint`` is accepted for the shared interface:
    a text run keeps one final model. ``overrides``: ``episodes.*`` / ``oos.*`` keys for this evaluation."""
    from .model import IntentModel

    run_dir = Path(run_dir)
    config = _run_config(run_dir, overrides)
    model = IntentModel.load(run_dir)
    started = time.perf_counter()
    if config.protocol == "episodes":
        result = _evaluate_episodes(config, model, episodes, progress, run_dir)
    else:
        result = _evaluate_split(config, model, progress)
    result.update(experiment=config.name, kind=NAME, protocol=config.protocol, seed=config.seed,
                  eval_minutes=round((time.perf_counter() - started) / 60, 3))
    refs = config.reference if isinstance(config.reference, list) else [config.reference] if config.reference else []
    result["reference"] = [r.model_dump() for r in refs]
    atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    return result


def _evaluate_split(config: TextConfig, model, progress: bool) -> dict:
    from ..training.metrics import confusion_matrix, macro_prf_from_confusion
    from .classify import oos_metrics

    test = target_data(config, "test")
    if list(test.classes) != model.classes:
        raise ValueError(f"{config.name}: the test split's intents differ from the trained model's")
    probs = model.probabilities(test.texts, progress)
    predicted = probs.argmax(1)
    labels = torch.as_tensor(test.labels)
    n = len(test)
    accuracy = float((predicted == labels).float().mean())
    precision, recall, f1 = macro_prf_from_confusion(confusion_matrix(predicted, labels, len(model.classes)))
    result = {"metric": "accuracy", "mean": accuracy, "ci95": 1.96 * math.sqrt(accuracy * (1 - accuracy) / n),
              "ci_over": "test texts (binomial)", "test_texts": n, "intents": len(model.classes),
              "macro_f1": float(f1), "macro_precision": float(precision), "macro_recall": float(recall)}
    if config.oos.enabled and model.threshold is not None:
        texts, y = _oos_split(config, "test", model.classes)
        top, pred = model.probabilities(texts, progress).max(1)
        result["oos"] = oos_metrics(top, pred, y, model.threshold)
        result["oos"]["test_texts"] = len(texts)
    return result


def _episode_pool(config: TextConfig) -> intents.TextDataset:
    root = config.data.root
    target = config.episodes.target
    if target == "clinc150-held-out":
        domains = intents.clinc150_domains(root)
        held = [i for d in config.data.held_out_domains for i in domains[d]]
        return intents.clinc150("test", root).restrict(held, name="clinc150-held-out")
    return intents.fewshot_split(target, "test", root)


def _evaluate_episodes(config: TextConfig, model, episodes: int | None, progress: bool, run_dir: Path) -> dict:
    """N-way K-shot ProtoNet episodes on the trained encoder's embeddings of the pool's texts (encoded once: the
    prototypes of a frozen encoder are the same whether a text is encoded per episode or once)."""
    from ..algorithms import ProtoNet
    from ..tasks import EpisodeSampler
    from ..training import evaluate as evaluate_tasks
    from .episodes import ScaledEncoder, embedding_dataset

    spec = config.episodes
    count = episodes or spec.episodes
    pool = _episode_pool(config)
    vectors = model.embed(pool.texts, progress)
    protonet = ProtoNet(ScaledEncoder(torch.nn.Identity(), config.meta_train.scale), strategy="loop")
    heads = {}
    if config.meta_train.algorithm == "anil" and config.meta_train.steps > 0:
        from .heads import load_anil_heads

        heads = load_anil_heads(run_dir)
    cells = {}
    for shots in spec.shots:
        dataset = embedding_dataset(vectors, pool, min_examples=shots + spec.queries)
        for ways in spec.ways:
            sampler = EpisodeSampler(dataset, ways=ways, shots=shots, queries=spec.queries, batch_size=50,
                                     seed=spec.seed)
            result = evaluate_tasks(heads.get(ways, protonet), sampler, episodes=count, progress=progress)
            cells[f"{ways}-way {shots}-shot"] = {"mean": result.mean, "ci95": result.ci95, "episodes": result.n,
                                                 "intents": len(dataset.classes)}
    first = next(iter(cells.values()))
    return {"metric": "accuracy", "mean": first["mean"], "ci95": first["ci95"], "episodes": count,
            "learner": "ANIL" if heads else "ProtoNet",
            "cells": cells, "pool": pool.name, "pool_texts": len(pool), "queries": spec.queries}


def format_eval(result: dict) -> str:
    if result.get("cells"):
        lines = [f"{result['experiment']}: {result['learner']} episodes on {result['pool']} ({result['episodes']} per cell, "
                 "95% CI over episodes)"]
        lines += [f"  {cell}: {100 * v['mean']:.2f}% ± {100 * v['ci95']:.2f}%" for cell, v in result["cells"].items()]
    else:
        lines = [f"{result['experiment']}: test accuracy {100 * result['mean']:.2f}% ± {100 * result['ci95']:.2f}% "
                 f"(95% CI over {result['test_texts']} test texts), macro F1 {100 * result['macro_f1']:.2f}%"]
        if "oos" in result:
            o = result["oos"]
            lines.append(f"  out of scope (threshold {o['threshold']:.3f}): in-scope accuracy "
                         f"{100 * o['in_scope_accuracy']:.2f}%, oos recall {100 * o['oos_recall']:.2f}%, "
                         f"oos precision {100 * o['oos_precision']:.2f}%")
    for ref in result.get("reference") or []:
        lines.append(f"  reference ({ref['source']}): {ref['value']}")
    return "\n".join(lines)


def report(run_dir: Path) -> list[Path]:
    """``report.md`` (config, training minutes, evaluation) and, after meta-training, its curves (``meta/``)."""
    run_dir = Path(run_dir)
    written: list[Path] = []
    if (run_dir / "meta" / "metrics.csv").is_file():
        from ..training import make_report

        written += make_report(run_dir / "meta")
    lines = [f"# {run_dir.name}", ""]
    for name, title in (("config.yaml", "Config"), ("train.json", "Training"), ("eval.json", "Evaluation")):
        path = run_dir / name
        if path.is_file():
            lines += [f"## {title}", "", "```", path.read_text().strip(), "```", ""]
    if (run_dir / "eval.json").is_file():
        lines += ["## Summary", "", format_eval(json.loads((run_dir / "eval.json").read_text())), ""]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return written + [out]
