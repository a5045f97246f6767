"""scripts/plot.py: the committed benchmark tables are reproduced byte for byte from the committed
records; the area under the curve and the table rows on a small hand-made record set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, load_script, run_cli

plot = load_script("plot")


def test_committed_tables_reproduce(tmp_path):
    readme = tmp_path / "top_readme.md"
    readme.write_text((REPO / "README.md").read_text())
    res = run_cli("scripts/plot.py", "--no-plots", "--out-dir", str(tmp_path), "--readme", str(readme))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "README.md").read_text() == (REPO / "benchmark_results" / "README.md").read_text()
    assert readme.read_text() == (REPO / "README.md").read_text()  # the headline table is up to date


def record(seed: int, ys: list[float], env_steps: int = 100) -> dict:
    curve = [{"step": 50 * i, "env_steps": 50 * i if env_steps else 0, "return": y, "normalized_return": y}
             for i, y in enumerate(ys)]  # fmt: skip
    return {"algo": "gail", "env": "Toy-v0", "seed": seed, "num_demos": 10, "steps": 100, "env_steps": env_steps,
            "wall_clock_s": 10.0, "final_normalized_return": ys[-1], "best_normalized_return": max(ys),
            "curve": curve}  # fmt: skip


def test_auc_and_table_rows(tmp_path: Path):
    assert plot.auc(record(1, [0.0, 0.5, 1.0])) == pytest.approx(0.5)  # straight line from 0 to 1
    assert plot.auc(record(1, [1.0, 1.0, 0.0])) == pytest.approx(0.75)
    folder = tmp_path / "records" / "gail"
    folder.mkdir(parents=True)
    for seed, ys in [(1, [0.0, 0.5, 1.0]), (2, [0.0, 1.0, 0.8])]:
        (folder / f"Toy-v0__seed{seed}.json").write_text(json.dumps(record(seed, ys)))
    (row,) = plot.table(plot.load_records(tmp_path / "records"))[2:]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["gail", "Toy-v0", "1,2", "10", "100 env steps"]
    assert cells[5] == "0.900 +- 0.100"  # final: 1.0 and 0.8
    assert cells[6] == "0.600 +- 0.100"  # AUC: 0.5 and 0.7
    assert cells[7] == "1.000 +- 0.000" and cells[10] == "10"  # best; 100 env steps / 10 s
    assert cells[8] == "100"  # seed 1 first reaches 0.9 at step 100, seed 2 at 50
    assert plot.all_reach([record(1, [0.0, 0.95]), record(2, [0.5, 0.85])]) == "1/2 seeds"


def test_learning_curves_are_drawn(tmp_path: Path):
    folder = tmp_path / "records" / "gail"
    folder.mkdir(parents=True)
    for seed, ys in [(1, [0.0, 0.5, 1.0]), (2, [0.0, 1.0, 0.8])]:
        (folder / f"Toy-v0__seed{seed}.json").write_text(json.dumps(record(seed, ys)))
    res = run_cli("scripts/plot.py", "--records", str(tmp_path / "records"), "--out-dir", str(tmp_path / "out"),
                  "--readme", "None")  # fmt: skip
    assert res.returncode == 0, res.stderr
    png = (tmp_path / "out" / "curves" / "Toy-v0.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_reward_correlation_table(tmp_path: Path):
    folder = tmp_path / "records" / "iqlearn"
    folder.mkdir(parents=True)
    for seed, (heldout, episodes) in enumerate([(0.2, 0.9), (0.4, 0.7)], start=1):
        rec = record(seed, [0.5, 1.0]) | {"final_eval": {"eval/return": 1.0, "reward/pearson_heldout": heldout,
                                                         "reward/pearson_episodes": episodes}}  # fmt: skip
        (folder / f"Toy-v0__seed{seed}.json").write_text(json.dumps(rec))
    (tmp_path / "records" / "gail").mkdir()
    (tmp_path / "records" / "gail" / "Toy-v0__seed1.json").write_text(json.dumps(record(1, [1.0])))  # no rewards
    header, _, row = plot.reward_table(plot.load_records(tmp_path / "records"))
    assert header == "| algorithm | env | seeds | reward/pearson_episodes | reward/pearson_heldout |"
    assert row == "| iqlearn | Toy-v0 | 1,2 | 0.800 +- 0.100 | 0.300 +- 0.100 |"
    assert plot.reward_table({("gail", "Toy-v0"): [record(1, [1.0])]}) == []


def test_against_sac_table():
    """Ratio of mean final returns against the sac records at the same env-step budget; offline runs and
    other budgets are left out, and without sac records there is no table."""

    def rec(seed: int, ret: float, env_steps: int = 100) -> dict:
        return record(seed, [0.5, 1.0], env_steps) | {"final_return": ret}

    groups = {("sac", "Toy-v0"): [rec(1, 100.0), rec(2, 200.0)],
              ("drlhp", "Toy-v0"): [rec(1, 110.0), rec(2, 130.0)],
              ("bc", "Toy-v0"): [rec(1, 150.0, env_steps=0)],
              ("gail", "Toy-v0"): [rec(1, 150.0, env_steps=50)]}  # fmt: skip
    header, _, row = plot.sac_table(groups)
    assert header.startswith("| algorithm | env | seeds | final return | SAC seeds")
    assert row == "| drlhp | Toy-v0 | 1,2 | 120.0 +- 10.0 | 1,2 | 150.0 +- 50.0 | 0.800 |"
    assert plot.sac_table({k: v for k, v in groups.items() if k[0] != "sac"}) == []


def test_unreadable_record_gets_one_line(tmp_path):
    (tmp_path / "records" / "bc").mkdir(parents=True)
    (tmp_path / "records" / "bc" / "x.json").write_text("{not json")
    res = run_cli("scripts/plot.py", "--records", str(tmp_path / "records"), "--out-dir", str(tmp_path))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "x.json" in res.stderr


def test_interval_estimates_on_fixed_arrays():
    assert plot.iqm(np.array([[1.0], [2.0], [3.0], [4.0]])) == pytest.approx(2.5)  # the middle half: 2 and 3
    # P(X > Y): pairs (1, 0) and (2, 0) win, (1, 3) and (2, 3) lose; a tie counts half
    assert plot.probability_of_improvement(np.array([[1.0], [2.0]]), np.array([[0.0], [3.0]])) == 0.5
    assert plot.probability_of_improvement(np.array([[1.0]]), np.array([[1.0]])) == 0.5
    from rliable import metrics

    rng = np.random.default_rng(0)
    x, y = rng.random((3, 4)).round(1), rng.random((5, 4)).round(1)  # rounded: ties happen
    assert plot.probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
    assert plot.seed_interval([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7, 0.7))  # nothing to resample
    point, low, high = plot.seed_interval([0.2, 0.9, 1.0, 0.95])
    assert point == pytest.approx((0.9 + 0.95) / 2) and 0.2 <= low <= point <= high <= 1.0
    assert plot.seed_interval([0.2, 0.9, 1.0, 0.95]) == (point, low, high)  # a fixed seed: the same interval
    scores = np.array([[0.5, 1.0], [0.7, 0.9], [0.6, 1.1]])
    point, low, high = plot.interval(plot.iqm, scores)
    assert point == pytest.approx(plot.iqm(scores)) and low <= point <= high
    # stratified: runs are resampled within each env, so every resample keeps one of each env's values
    assert low >= np.sort(scores, 0)[:1].mean() - 1e-9 and high <= np.sort(scores, 0)[-1:].mean() + 1e-9
    plot._interval.cache_clear()
    np.random.seed(123)  # whatever state numpy's global generator is in, the same interval comes out
    assert plot.interval(plot.iqm, scores) == (point, low, high)
    pair = plot.interval(plot.probability_of_improvement, scores, scores[::-1] + 0.05)
    plot._interval.cache_clear()
    np.random.rand(7)
    assert plot.interval(plot.probability_of_improvement, scores, scores[::-1] + 0.05) == pair
