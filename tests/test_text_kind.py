"""The ``kind: text`` functions end to end on a miniature data folder with a tiny random encoder: train (meta-train,
fine-tune, classifier, out-of-scope threshold), evaluate, format, report; the episodes protocol; config errors."""

import json

import pytest
import torch
import yaml

from quickstudy.config import ConfigError
from quickstudy.text import kind
from quickstudy.text.extra import text_extra_available

from _text_toy import make_data_root, tiny_encoder

pytestmark = pytest.mark.skipif(not text_extra_available(), reason="needs the 'text' extra: pip install 'quickstudy[text]'")


@pytest.fixture
def mini(tmp_path, monkeypatch):
    root = make_data_root(tmp_path / "data")
    monkeypatch.setenv("QUICKSTUDY_DATA", str(root))
    monkeypatch.setenv("QUICKSTUDY_CACHE", str(tmp_path / "cache"))
    import quickstudy.text.encoder as encoder_module
    import quickstudy.text.model as model_module

    fake = lambda spec="minilm", max_length=64: tiny_encoder(max_length=max_length)  # noqa: E731
    monkeypatch.setattr(encoder_module, "load_encoder", fake)
    monkeypatch.setattr(model_module, "load_encoder", fake)
    return root


def write_run(tmp_path, raw):
    config, resolved = kind.load_config(raw=raw)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(resolved))
    return config, run


def test_fixed_split_train_evaluate_report(mini, tmp_path):
    config, run = write_run(tmp_path, {
        "kind": "text", "name": "mini", "data": {"dataset": "clinc150", "shots": 5},
        "meta_train": {"sources": ["banking77"], "steps": 2, "ways": 3, "shots": 1, "queries": 1, "train_last": 1},
        "finetune": {"epochs": 2, "batch_size": 6, "train_last": 1}, "classifier": {"name": "logistic"},
        "oos": {"enabled": True}})
    kind.train(config, run, progress=False)
    summary = json.loads((run / "train.json").read_text())
    assert summary["meta_train"]["steps"] == 2 and summary["intents"] == 4
    assert set(summary["minutes"]) >= {"meta_train", "finetune", "classifier", "oos_threshold", "total"}
    assert (run / "meta" / "last.pt").is_file() and (run / "intent_model.pt").is_file()
    from quickstudy.text.model import IntentModel

    model = IntentModel.load(run)
    assert model.frozen_below == 1 and model.encoder_modified  # the last layer only was trained
    texts = ["book a flight", "play some music"]
    assert torch.allclose(model.embed(texts), model.encoder.encode(texts), atol=1e-5)
    result = kind.evaluate(run, progress=False)
    assert json.loads((run / "eval.json").read_text()) == result
    assert 0.0 <= result["mean"] <= 1.0 and result["test_texts"] == 12
    assert set(result["oos"]) >= {"in_scope_accuracy", "oos_recall", "oos_precision", "threshold"}
    assert "test accuracy" in kind.format_eval(result) and "out of scope" in kind.format_eval(result)
    written = kind.report(run)
    assert (run / "report.md").is_file() and any(p.suffix == ".png" for p in written)


def test_episodes_protocol_holds_out_domains(mini, tmp_path):
    config, run = write_run(tmp_path, {
        "kind": "text", "name": "held-out", "protocol": "episodes", "data": {"held_out_domains": ["banking", "music"]},
        "meta_train": {"steps": 2, "ways": 2, "shots": 1, "queries": 1},
        "episodes": {"ways": [2], "shots": [1], "queries": 1, "episodes": 4}})
    source = kind.source_data(config)
    assert set(source.classes) == {"alpha", "delta"}  # meta-training never sees a held-out domain's intent
    kind.train(config, run, progress=False)
    result = kind.evaluate(run, progress=False)
    cell = result["cells"]["2-way 1-shot"]
    assert cell["episodes"] == 4 and cell["intents"] == 2 and 0.0 <= cell["mean"] <= 1.0
    assert "2-way 1-shot" in kind.format_eval(result)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown key 'finetune.epoch'"):
        kind.load_config(raw={"kind": "text", "finetune": {"epoch": 3}})
    with pytest.raises(ConfigError, match="data.shots"):
        kind.load_config(raw={"kind": "text", "data": {"shots": 7}})
    with pytest.raises(ConfigError, match="must not hold the target data set"):
        kind.load_config(raw={"kind": "text", "data": {"dataset": "banking77"},
                              "meta_train": {"sources": ["banking77"], "steps": 5}})


def test_every_shipped_text_config_validates():
    from pathlib import Path

    paths = sorted((Path(__file__).parent.parent / "configs" / "text").glob("*.yaml"))
    cells = {f"{d}-{k}shot" for d in ("banking77", "clinc150", "hwu64") for k in (5, 10)}
    assert cells <= {p.stem for p in paths}  # one config per published cell
    for path in paths:
        config, resolved = kind.load_config(path)
        assert resolved["name"] == config.name == path.stem
        if config.protocol == "fixed-split":
            assert config.reference, f"{path.name} names the published numbers it is compared with"
            assert config.data.dataset not in config.meta_train.sources


def test_episodes_protocol_with_an_anil_head(mini, tmp_path):
    config, run = write_run(tmp_path, {
        "kind": "text", "name": "anil", "protocol": "episodes", "data": {"held_out_domains": ["banking", "music"]},
        "meta_train": {"algorithm": "anil", "steps": 2, "shots": 1, "queries": 1},
        "episodes": {"ways": [2], "shots": [1], "queries": 1, "episodes": 4}})
    kind.train(config, run, progress=False)
    assert (run / "anil_heads.pt").is_file() and (run / "anil-2way" / "last.pt").is_file()
    result = kind.evaluate(run, progress=False)
    assert result["learner"] == "ANIL" and result["cells"]["2-way 1-shot"]["episodes"] == 4
    with pytest.raises(ConfigError, match="anil"):
        kind.load_config(raw={"kind": "text", "meta_train": {"algorithm": "anil", "steps": 2}})


def test_the_shared_cli_runs_a_text_config(mini, tmp_path, capsys):
    from quickstudy.cli import main

    config = tmp_path / "mini.yaml"
    config.write_text(yaml.safe_dump({"kind": "text", "name": "mini-cli", "data": {"dataset": "clinc150", "shots": 5},
                                      "classifier": {"name": "prototypes"}}))
    run = tmp_path / "cli-run"
    assert main(["train", str(config), "--out", str(run), "--json", "--quiet", "--eval"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["run_dir"] == str(run) and 0.0 <= payload["eval"]["mean"] <= 1.0
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_texts"] == 12
    assert main(["report", str(run), "--json"]) == 0
    assert any(f.endswith("report.md") for f in json.loads(capsys.readouterr().out)["files"])
