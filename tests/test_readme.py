"""The README's Python example runs (with fewer steps) and its claims about shapes hold."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"## In Python\n\n```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("steps=100", "steps=2").replace("episodes=100", "episodes=4").replace("val_every=50", "val_every=2")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    batch = namespace["batch"]
    assert tuple(batch.support_x.shape) == (8, 5, 1, 28, 28)
    assert tuple(batch.query_x.shape) == (8, 75, 1, 28, 28)
    assert tuple(namespace["logits"].shape) == (75, 5)
    assert (tmp_path / "runs" / "readme" / "last.pt").is_file()


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_readme_meta_rl_example_runs():
    text = README.read_text()
    code = re.search(r"## Meta-RL\n.*?```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("sample_tasks(20", "sample_tasks(3").replace(", 20, g,", ", 2, g,")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert set(namespace["fast"]) == set(namespace["learner"].params())  # adapted weights, one set per name


def test_readme_warm_start_example_runs():
    import pytest

    pytest.importorskip("sklearn")
    pytest.importorskip("pymfe")
    text = README.read_text()
    code = re.search(r"## External meta-learning.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    search = namespace["result"]["search"]
    assert len(search["trials"]) == 5 and len({t["configuration"] for t in search["trials"]}) == 5
    assert search["best"]["balanced_accuracy"] == max(t["balanced_accuracy"] for t in search["trials"])


def test_readme_text_example_runs(tmp_path, monkeypatch, capsys):
    import pytest

    from quickstudy.text.extra import text_extra_available

    if not text_extra_available():
        pytest.skip("needs the 'text' extra: pip install 'quickstudy[text]'")
    monkeypatch.setenv("QUICKSTUDY_CACHE", str(tmp_path))
    text = README.read_text()
    code = re.search(r"## Text: few-shot intent detection\n.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert capsys.readouterr().out.startswith("card_damaged ")
    assert tuple(namespace["z"].shape) == (6, 384)
