"""Reading a config file: one safe YAML loader for every config kind refuses what would exhaust the machine or
silently mean something else (alias bombs, recursive aliases, duplicate keys, an empty file), and a run
needs at least one step."""

from __future__ import annotations

import pytest

from quickstudy.config import ConfigError, load_config, read_raw
from quickstudy.rl.config import load_rl_config
from quickstudy.tasks.kinds import kind_of


def alias_bomb(levels: int, width: int = 9) -> str:
    """A few hundred bytes that expand to width**levels values: each level lists the one before width times."""
    lines = ["model:", "  name: conv4", f"  l0: &l0 [{', '.join(['x'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(5))  # 9**5 = 59,049 values from 190 bytes
    assert len(path.read_bytes()) < 400
    with pytest.raises(ConfigError, match=r"bomb\.yaml: .*aliases.* more than [\d,]+ values"):
        load_config(path)
    assert kind_of(path).name == "episodes"  # deciding the kind reads the file with the same bound, no blow-up


def test_a_much_deeper_alias_bomb_is_refused_too(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(alias_bomb(12))  # 9**12 values: would never finish expanding
    with pytest.raises(ConfigError, match="aliases"):
        load_rl_config(path)


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("model: &m {name: conv4, again: *m}\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(path)


def test_a_few_aliases_are_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("reference: [&r {source: paper, value: 90.0}, *r]\ntask: &t {ways: 3}\n")
    config, _ = load_config(path)
    assert len(config.reference) == 2 and config.task.ways == 3


@pytest.mark.parametrize("text,key,line", [
    ("train: {steps: 5}\ntrain: {steps: 7}\n", "train", 2),
    ("train:\n  steps: 5\n  lr: 0.1\n  steps: 7\n", "steps", 4),
])
def test_a_duplicate_key_is_refused_naming_it_and_its_line(tmp_path, text, key, line):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"dup\.yaml, line {line}: duplicate key '{key}'"):
        load_config(path)


def test_merge_keys_may_still_override_what_they_merge(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("task: &t {ways: 3, shots: 1}\neval: {episodes: 6}\ntrain: {steps: 3}\n"
                    "reference: {<<: {source: a, value: 1.0}, value: 2.0}\n")
    config, _ = load_config(path)
    assert config.reference.value == 2.0


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_config_file_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"empty\.yaml is empty"):
        load_config(path)
    with pytest.raises(ConfigError, match="is empty"):
        load_rl_config(path)


def test_read_raw_is_the_one_loader(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\na: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        read_raw(path, None, None)


def test_override_values_go_through_the_same_loader():
    with pytest.raises(ConfigError, match="duplicate key 'steps'"):
        load_config(overrides=["train={steps: 3, steps: 4}"])


@pytest.mark.parametrize("loader,override,key", [
    (load_config, "train.steps=0", "train.steps"),
    (load_rl_config, "train.iterations=0", "train.iterations"),
])
def test_zero_steps_are_refused(loader, override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        loader(overrides=[override])

