"""Shipped experts: one episode each scores well above random; the experts table is regenerated exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, run_cli

from cleanil import envs

SHIPPED = sorted(p.stem for p in envs.EXPERT_DIR.glob("*.json"))


@pytest.mark.parametrize("env_id", SHIPPED)
def test_one_episode_scores_well_above_random(env_id):
    meta = envs.load_expert_metadata(env_id)
    policy = envs.numpy_policy(envs.load_expert(env_id), torch.device("cpu"))
    ret = envs.rollout(policy, env_id, 1, seed=envs.EVAL_SEED_BASE - 1)["returns"][0]
    assert envs.normalized_score(ret, env_id) > 0.5, (ret, meta["return_mean"], meta["random_return_mean"])


def test_experts_table_is_regenerated_byte_for_byte(tmp_path):
    res = run_cli("scripts/experts_table.py", "--out", str(tmp_path / "experts.md"))
    assert res.returncode == 0, res.stderr
    committed = (REPO / "benchmark_results" / "experts.md").read_text()
    assert (tmp_path / "experts.md").read_text() == committed
    assert committed.count("\n| ") == len(SHIPPED) + 1  # header + one row per shipped expert
