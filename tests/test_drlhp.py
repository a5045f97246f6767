"""DRLHP: the Bradley-Terry loss, the synthetic oracle, fragments, the hidden true reward, CLI smoke
runs and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, preference_fragments, random_policy, run_script
from scipy import stats

from cleanil import drlhp, envs


def test_bradley_terry_hand_computed():
    r1, r2 = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 2.0])
    # P(1 > 2) = sigmoid(R1 - R2): sigmoid(1), sigmoid(1), sigmoid(-2)
    expected = [-math.log(1 / (1 + math.exp(-1))),  # mu = 1
                -0.5 * math.log(1 / (1 + math.exp(-1))) - 0.5 * math.log(1 / (1 + math.exp(1))),  # mu = 0.5
                -math.log(1 - 1 / (1 + math.exp(2)))]  # mu = 0: P(2 > 1) = sigmoid(2)  # fmt: skip
    loss = drlhp.bradley_terry_loss(r1, r2, torch.tensor([1.0, 0.5, 0.0]))
    assert loss.item() == pytest.approx(sum(expected) / 3)


def fragment(rewards: list[float]) -> dict:
    n = len(rewards)
    return {"obs": np.zeros((n, 3)), "actions": np.zeros((n, 1)), "alive": np.ones(n, bool),
            "true_rewards": np.array(rewards)}  # fmt: skip


def test_oracle_prefers_higher_return_as_temperature_goes_to_zero():
    better, worse = fragment([1.0, 1.0]), fragment([1.0, 0.9])  # returns 2.0 vs 1.9
    pairs = [(better, worse), (worse, better)] * 500
    for temperature in (0.0, 1e-4):
        mu = drlhp.SyntheticOracle(temperature, 0.0, seed=0)(pairs)
        assert mu[0::2].tolist() == [1.0] * 500 and mu[1::2].tolist() == [0.0] * 500
    hot = drlhp.SyntheticOracle(10.0, 0.0, seed=0)(pairs)  # P(first) = sigmoid(0.01): near a coin flip
    assert 0.4 < hot[0::2].mean() < 0.6
    assert drlhp.SyntheticOracle(0.0, 0.0, seed=0)([(better, better)]).tolist() == [0.5]
    noisy = drlhp.SyntheticOracle(0.0, 1.0, seed=0)(pairs)  # always random
    assert 0.4 < noisy[0::2].mean() < 0.6


def test_fragments_cut_pad_and_drop():
    cutter = drlhp.FragmentCutter(num_envs=1, length=3, obs_dim=2, act_dim=1)
    out = [cutter.add(0, np.array([t, t]), np.array([0.5]), 1.0, False, False) for t in range(4)]
    assert [len(o) for o in out] == [0, 0, 1, 0]  # one fragment of 3 steps; step 3 starts the next
    frag = out[2][0]
    assert frag["obs"].tolist() == [[0, 0, 0], [1, 1, 0], [2, 2, 0]] and frag["alive"].all()
    (ended,) = cutter.add(0, np.array([4, 4]), np.array([0.5]), 1.0, True, False)  # termination: pad
    assert ended["alive"].tolist() == [True, True, False]
    assert ended["obs"][2].tolist() == [0, 0, 1] and ended["actions"][2].tolist() == [0]
    assert ended["true_rewards"].tolist() == [1.0, 1.0, 0.0]
    cutter.add(0, np.array([5, 5]), np.array([0.5]), 1.0, False, False)
    assert cutter.add(0, np.array([6, 6]), np.array([0.5]), 1.0, False, True) == []  # time limit: dropped
    assert cutter.current[0] == []


TINY = ("--num-queries", "20", "--reward-updates", "5", "--eval-episodes", "2", "--hidden", "32", "32",
        "--fragment-length", "10")  # fmt: skip
SAC_TINY = ("--total-steps", "600", "--learning-starts", "300", "--query-every", "100", "--eval-every", "600",
            "--log-every", "100", "--batch-size", "64")  # fmt: skip
PPO_TINY = ("--total-steps", "512", "--num-envs", "4", "--num-steps", "64", "--update-epochs", "2",
            "--eval-every", "512")  # fmt: skip


@pytest.mark.parametrize("active", ["--active", "--no-active"])
def test_smoke_sac_and_ppo(tmp_path, active):
    for env, flags in (("Pendulum", SAC_TINY), ("CartPole", PPO_TINY)):
        res = run_cli("cleanil/drlhp.py", "--env", env, active, *flags, *TINY, "--run-dir", str(tmp_path / env))
        assert res.returncode == 0, res.stderr
        run = only_run_dir(tmp_path / env)
        rows = read_metrics(run)
        queries = [r["queries"] for r in rows if "queries" in r]
        assert queries[0] == 5 and queries[-1] == 20  # a quarter first, all of them by the end
        updates = [r for r in rows if "losses/critic" in r or "losses/policy" in r]
        assert updates and all(np.isfinite(r.get("losses/critic", r.get("losses/policy"))) for r in updates)
        assert "eval/normalized_return" in rows[-1]
        assert (run / "model.pt").exists() and (run / "reward.pt").exists()


@pytest.mark.parametrize("env,flags", [("NaNRewardPendulum-v0", SAC_TINY), ("NaNRewardCartPole-v0", PPO_TINY)])
def test_agent_never_sees_the_true_reward(tmp_path, env, flags):
    """The env's reward is NaN at every step; a gatherer that ignores rewards answers. Any use of the
    true reward by the agent or the reward model would turn their losses into NaN."""
    res = run_cli("cleanil/drlhp.py", "--env", env, "--gatherer", "tests.preference_gatherers:prefer_first_coordinate",
                  *flags, *TINY, "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = read_metrics(only_run_dir(tmp_path))
    losses = {k: v for r in rows for k, v in r.items() if k.startswith("losses/") or k.startswith("reward_")}
    assert {"losses/bradley_terry", "reward_mean"} <= set(losses)
    assert all(np.isfinite(v) for r in rows for k, v in r.items() if k.startswith(("losses/", "reward_")))
    assert math.isnan(rows[-1]["eval/return"])  # evaluation does read the env's (NaN) reward


def test_bad_input_gets_one_line(tmp_path):
    cases = [
        (("--gatherer", "nomodule_here:fn"), "cannot load it"),
        (("--gatherer", "tests.preference_gatherers:wrong_shape", *PPO_TINY), "must return"),
        (("--num-queries", "0"), "need --num-queries >= 1"),
    ]
    for flags, message in cases:
        res = run_cli("cleanil/drlhp.py", "--env", "CartPole", *flags, "--run-dir", str(tmp_path / "runs"))
        assert res.returncode == 2, res.stderr
        errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], res.stderr
        assert "Traceback" not in res.stderr


def test_drlhp_learns_cartpole(tmp_path):
    """~120 s: PPO agent, 30k env steps, 100 synthetic queries (0.2 normalized by then)."""
    run = run_script(tmp_path, "cleanil/drlhp.py", "--env", "CartPole", "--total-steps", "30000", "--num-queries",
                     "100", "--eval-every", "30000", "--eval-episodes", "2")  # fmt: skip
    beats_random(run, "CartPole-v1", margin=0.1)
    spec, config = envs.env_spec("CartPole-v1"), json.loads((run / "config.json").read_text())
    blob = torch.load(run / "reward.pt", weights_only=True)
    reward = drlhp.RewardEnsemble(spec.obs_dim + 1 + spec.act_dim, blob["ensemble"], tuple(blob["hidden"]))
    reward.load_state_dict(blob["state_dict"])
    trained = envs.numpy_policy(envs.load_policy(run / "model.pt", spec), torch.device("cpu"))
    frags = preference_fragments([trained, random_policy(spec)], config["fragment_length"])
    rng = np.random.default_rng(0)
    pairs = [(frags[i], frags[j]) for i, j in rng.integers(len(frags), size=(400, 2))]
    truth = np.array([a["true_rewards"].sum() - b["true_rewards"].sum() for a, b in pairs])
    with torch.no_grad():
        predicted = [float(reward.members(torch.as_tensor(a["obs"]), torch.as_tensor(a["actions"])).sum()
                           - reward.members(torch.as_tensor(b["obs"]), torch.as_tensor(b["actions"])).sum())
                     for a, b in pairs]  # fmt: skip
    decided = truth != 0
    correct = int(((np.array(predicted) > 0) == (truth > 0))[decided].sum())
    test = stats.binomtest(correct, int(decided.sum()), 0.5, alternative="greater")
    assert decided.sum() >= 30 and test.pvalue < 0.01, (correct, decided.sum())
