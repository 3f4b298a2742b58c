"""Smoke tests of the speed benchmark's machinery (bench/): seconds, and no peer library needed.

They check that the quickstudy worker and the plain-loop worker do the same work (equal float64
meta-gradients from the same initial weights and data), that the driver runs end to end and writes its
JSON, and that a missing peers venv is reported rather than fatal.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch

from bench import libraries, speed, speed_table
from bench.peers import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "bench", "peers")


def _meta_grad(worker_name: str, cell_name: str, meta_batch: int = 2):
    worker = importlib.import_module(f"bench.peers.{worker_name}_worker")
    cell = common.CELLS[cell_name].with_meta_batch(meta_batch)
    batch = common.make_batch(cell, seed=0, dtype=torch.float64)
    step, params = worker.build(cell, batch, torch.float64)
    step()
    return [p.grad.detach().clone() for p in params]


@pytest.mark.parametrize("lib", ["quickstudy", "qs_user", "qs_user_loss", "qs_loss"])
@pytest.mark.parametrize("cell, meta_batch", [("maml-1shot-1step-2nd", 2), ("maml-1shot-1step-1st", 1),
                                              ("protonet-1shot", 1), ("imaml-1shot-5step", 1)])
def test_quickstudy_workers_match_plain_loop(lib, cell, meta_batch):
    """Every quickstudy row (built-in or the user's model, meta_backward or meta_loss().backward()) does the plain
    loop's maths."""
    torch.set_num_threads(1)
    ours, ref = _meta_grad(lib, cell, meta_batch), _meta_grad("torch_loop", cell, meta_batch)
    num = sum(float(((a - b) ** 2).sum()) for a, b in zip(ours, ref)) ** 0.5
    den = sum(float((b ** 2).sum()) for b in ref) ** 0.5
    assert num / den < 1e-10, f"{cell}: the quickstudy worker's meta-gradient differs from the loop's: {num / den:.2e}"


def test_cells_and_data():
    assert common.select_cells("table") == common.TABLE_CELLS
    assert set(common.select_cells("maml-5shot-*")) == {n for n in common.CELLS if n.startswith("maml-5shot-")}
    with pytest.raises(SystemExit):
        common.select_cells("no-such-cell")
    cell = common.CELLS["maml-5shot-1step-2nd"].with_meta_batch(3)
    sx, sy, qx, qy = common.make_batch(cell)
    assert sx.shape == (3, 25, 1, 28, 28) and qx.shape == (3, 75, 1, 28, 28)
    assert sy.tolist()[0] == [c for c in range(5) for _ in range(5)]
    assert torch.equal(common.make_batch(cell)[0], sx)  # fixed seed: the same data for every library


def test_speed_driver_end_to_end(tmp_path):
    out = tmp_path / "speed.json"
    code = speed.main(["--quick", "--no-roofs", "--threads", "1", "--meta-batch", "1", "--cells",
                       "maml-1shot-1step-1st", "--libs", "quickstudy,learn2learn",
                       "--peers-python", str(tmp_path / "no-venv" / "python"), "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["results"]["maml-1shot-1step-1st"]
    assert rows["quickstudy"]["tasks_per_s"] > 0 and rows["quickstudy"]["peak_rss_mib"] > 0, rows["quickstudy"]
    assert "not installed" in rows["learn2learn"]["error"]
    assert len(data["load_before"]) == 3 and data["machine"]["torch"] == torch.__version__


def test_leak_script_runs(capsys):
    from bench import leak

    code = leak.main(["--steps", "4", "--every", "2", "--meta-batch", "1", "--cell", "maml-1shot-1step-1st",
                      "--tolerance-mib", "256"])
    assert code in (0, 1)
    assert "RSS" in capsys.readouterr().out


def test_fused_ab_script_runs(capsys):
    from bench import fused_ab

    fused_ab.main(["--meta-batch", "1", "--reps", "1", "--threads", "1", "--first-order"])
    assert "on / off" in capsys.readouterr().out


def test_fused_ab_switches_the_lean_pool(capsys):
    from bench import fused_ab

    fused_ab.main(["--meta-batch", "1", "--reps", "1", "--threads", "1", "--switch", "lean-pool"])
    assert "lean-pool: on" in capsys.readouterr().out


def test_gpu_table_prints_the_recorded_h100_run(capsys):
    """The GPU table reads the JSON the H100 run wrote (docs/bench/speed_h100.json): ratios and GPU memory."""
    with open(os.path.join(ROOT, "docs", "bench", "speed_h100.json")) as f:
        recorded = json.load(f)
    speed_table.print_table_cuda(recorded["results"], recorded["roofs"], recorded["threads"], recorded["machine"])
    table = capsys.readouterr().out
    assert "NVIDIA H100" in table and "float32 exact: True" in table
    row = next(line for line in table.splitlines() if line.split()[:2] == ["maml-1shot-1step-2nd", "quickstudy"])
    assert row.split()[2] == "455.3" and row.split()[5] == "5.58" and row.split()[-1] == "vmap"
    assert "(not run: --budget-s 345 s used up)" in table


def test_driver_tables_agree_with_the_workers():
    """speed.py keeps each worker's SUPPORTS and LIBRARY (to skip cells without starting a process): read the
    workers' own constants from their source (the peers are not importable here) and compare."""
    import ast

    def constants(lib):
        with open(os.path.join(PEERS, f"{lib}_worker.py")) as f:
            tree = ast.parse(f.read())
        found = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                name = node.targets[0].id
                if name in ("SUPPORTS", "LIBRARY", "MODELS"):
                    if isinstance(node.value, ast.Attribute):  # e.g. quickstudy_worker.SUPPORTS
                        found[name] = constants(node.value.value.id.removesuffix("_worker"))[name]
                    else:
                        found[name] = ast.literal_eval(node.value)
        return found

    for lib in libraries.ALL_LIBS:
        worker = constants(lib)
        assert worker["SUPPORTS"] == libraries.LIB_SUPPORTS[lib], lib
        assert worker["LIBRARY"] == libraries.LIB_NAMES[lib], lib
        assert tuple(worker.get("MODELS", ("conv4",))) == libraries.LIB_MODELS[lib], lib


def test_rows_without_their_own_flop_count_use_the_plain_loops():
    """The threads strategy hides its FLOPs from FlopCounterMode (one thread's view): the table then uses the
    plain loop's count (same maths) for its achieved FLOP/s, marked, rather than leaving it blank."""
    rows = {"torch_loop": {"tasks_per_s": 10.0, "flops": 2e11, "peak_rss_mib": 500.0},
            "quickstudy": {"tasks_per_s": 20.0, "flops": None, "peak_rss_mib": 450.0},
            "learn2learn": {"tasks_per_s": 8.0, "flops": 2e11, "peak_rss_mib": 510.0}}
    speed_table.summarize_cell(rows)
    assert rows["quickstudy"]["useful_flops"] == 2e11 and "threads" in rows["quickstudy"]["flops_note"]
    assert rows["learn2learn"]["useful_flops"] == 2e11 and "flops_note" not in rows["learn2learn"]
    assert rows["quickstudy"]["ratio_to_fastest_peer"] == 2.5


def test_profile_breakdown_splits_convolutions_from_the_rest(tmp_path, capsys):
    """bench.speed_profile on a hand-made run: a peer whose one calling thread spends 4 s of an 8 s step in
    convolutions, and quickstudy whose two workers spend 4 s (together) of a 3 s step in them."""
    from bench import speed_profile

    def worker(wall_s, conv_ms, other_ms, tasks_per_s):
        top = [{"op": "aten::mkldnn_convolution", "self_cpu_ms": conv_ms / 4, "calls": 10},
               {"op": "aten::convolution_backward", "self_cpu_ms": 3 * conv_ms / 4, "calls": 10},
               {"op": "aten::mul", "self_cpu_ms": other_ms, "calls": 10}]
        return {"tasks_per_s": tasks_per_s, "ratio_to_fastest_peer": None,
                "profile": {"profile_wall_s": wall_s, "ops_self_cpu_s": (conv_ms + other_ms) / 1e3, "top": top}}

    results = {"cell": {"learn2learn": worker(8.0, 4000, 4000, 4.0), "quickstudy": worker(3.0, 4000, 2000, 10.0),
                        "torchopt": {"skipped": "no such cell"}}}
    rows = speed_profile.table(results)["cell"]
    assert set(rows) == {"learn2learn", "quickstudy"}
    qs = rows["quickstudy"]
    assert qs["conv_ms"] == pytest.approx(4000) and qs["other_ms"] == pytest.approx(2000)
    assert qs["in_ops"] == pytest.approx(2.0) and qs["conv_share"] == pytest.approx(2 / 3)
    assert qs["conv_lead"] == pytest.approx(4000 / (4000 / 2.0))   # the peer's 4 s against 2 s on two threads
    assert rows["learn2learn"]["conv_lead"] == pytest.approx(1.0)

    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"results": results}))
    assert speed_profile.main([str(path), "--json", str(tmp_path / "out.json")]) == 0
    assert "quickstudy" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["cell"]["quickstudy"]["conv_lead"] == pytest.approx(2.0)
    path.write_text(json.dumps({"results": {"cell": {"quickstudy": {"tasks_per_s": 1.0}}}}))
    assert speed_profile.main([str(path)]) == 2                     # no profiles: a one-line error
    assert "holds no profiles" in capsys.readouterr().err
