"""Behavioral cloning: losses against hand-computed values, CLI smoke runs, bad input, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, run_script

from cleanil import bc, envs

TINY = ("--total-steps", "60", "--eval-every", "30", "--log-every", "20", "--eval-episodes", "2", "--num-demos", "2")


def test_discrete_loss_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # probabilities 1/4, 3/4
    out = bc.bc_loss_discrete(logits, torch.tensor([1]), ent_weight=0.5)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert out["nll"].item() == pytest.approx(-math.log(0.75))
    assert out["entropy"].item() == pytest.approx(entropy)
    assert out["loss"].item() == pytest.approx(-math.log(0.75) - 0.5 * entropy, abs=1e-6)


def test_continuous_loss_hand_computed():
    spec = envs.env_spec("Pendulum-v1")  # actions in [-2, 2]: scale 2, bias 0
    actor = envs.make_actor(spec, (4,))
    torch.nn.init.zeros_(actor.net[-1].weight)
    torch.nn.init.zeros_(actor.net[-1].bias)  # mean 0, log_std = -5 + 3.5 * (tanh(0) + 1) = -1.5
    out = bc.bc_loss_continuous(actor, torch.zeros(1, 3), torch.zeros(1, 1), ent_weight=0.1)
    # u = atanh(0) = 0: -log pi = log sigma + 0.5 log(2 pi) + log(scale * (1 - tanh(0)^2))
    nll = -1.5 + 0.5 * math.log(2 * math.pi) + math.log(2.0)
    entropy = -1.5 + 0.5 * math.log(2 * math.pi * math.e)
    assert out["nll"].item() == pytest.approx(nll, abs=1e-5)
    assert out["entropy"].item() == pytest.approx(entropy, abs=1e-5)
    assert out["loss"].item() == pytest.approx(nll - 0.1 * entropy, abs=1e-5)


def test_l2_penalty_hand_computed():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias.fill_(3.0)
    assert bc.l2_penalty(layer).item() == pytest.approx(14.0)


@pytest.mark.parametrize("env", ["CartPole", "Pendulum"])
def test_cli_smoke(tmp_path, env):
    res = run_cli("cleanil/bc.py", "--env", env, "--run-dir", str(tmp_path), *TINY)
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    rows = read_metrics(run)
    train = [r for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/return" in r]
    assert [r["global_step"] for r in train] == [20, 40, 60] and all("val/nll" in r for r in train)
    assert [r["global_step"] for r in evals] == [30, 60] and all("eval/normalized_return" in r for r in evals)
    assert train[0]["train/nll"] != train[-1]["train/nll"]  # parameters moved
    actor = envs.load_policy(run / "model.pt", envs.env_spec(envs.resolve_env_id(env)))
    assert actor is not None and (run / "config.json").exists()


def test_help_explains_every_flag():
    res = run_cli("cleanil/bc.py", "--help")
    assert res.returncode == 0
    for field in bc.Args.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in res.stdout
    assert res.stdout.count("(default") >= len(bc.Args.__dataclass_fields__)


def _one_line_error(res, needle: str) -> None:
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert needle in lines[0], lines[0]


def test_bad_input_gives_one_line_and_keeps_earlier_runs(tmp_path):
    runs = tmp_path / "runs"
    assert run_cli("cleanil/bc.py", "--run-dir", str(runs), *TINY).returncode == 0
    before = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}

    good = envs.load_demos("CartPole-v1", 2)
    wide = {
        **good,
        "obs": np.pad(good["obs"], ((0, 0), (0, 1))),
        "next_obs": np.pad(good["next_obs"], ((0, 0), (0, 1))),
    }
    nan = {**good, "obs": good["obs"].copy()}
    nan["obs"][3, 1] = np.nan
    envs.save_demo_file(tmp_path / "wide.npz", wide)
    envs.save_demo_file(tmp_path / "nan.npz", nan)
    cases = {
        ("--env", "NoSuchEnv"): "unknown environment 'NoSuchEnv'",
        ("--demos", str(tmp_path / "missing.npz")): "missing.npz does not exist",
        ("--demos", str(tmp_path / "wide.npz")): "observations have shape (4,)",
        ("--demos", str(tmp_path / "nan.npz")): "NaN or infinite values in 'obs'",
        ("--env", "Pendulum", "--demos", str(tmp_path / "wide.npz")): "observations have shape (3,)",
        ("--env", "FrozenLake-v1"): "cleanil needs a flat Box",
    }
    for flags, needle in cases.items():
        _one_line_error(run_cli("cleanil/bc.py", "--run-dir", str(runs), *TINY, *flags), needle)
    after = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}
    assert after == before


def test_same_seed_same_metrics(tmp_path):
    def metrics(root):
        res = run_cli("cleanil/bc.py", "--env", "Pendulum", "--run-dir", str(root), *TINY)
        assert res.returncode == 0, res.stderr
        drop = ("time", "env_steps_per_s")
        return [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(only_run_dir(root))]

    first, second = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert first == second and len(first) > 0


def test_learns_cartpole_far_better_than_random(tmp_path):
    args = bc.Args(env="CartPole", num_demos=5, total_steps=800, eval_every=800, eval_episodes=5,
                   run_dir=str(tmp_path), save_model=False)  # fmt: skip
    final = bc.main(args)
    assert final["eval/normalized_return"] > 0.6  # random scores 0


def test_track_runs_offline_without_a_login(tmp_path):
    """--track logs to wandb with no account or network (offline mode), next to the run's files."""
    res = run_cli("cleanil/bc.py", "--track", "--run-dir", str(tmp_path), *TINY)
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    assert any((run / "wandb").glob("offline-run-*")), list(run.rglob("*"))[:10]
    assert len([r for r in read_metrics(run) if "eval/return" in r]) == 2


def test_bc_learns_cartpole(tmp_path):
    """~15 s: 5 demos, 1,000 gradient steps."""
    run = run_script(tmp_path, "cleanil/bc.py", "--env", "CartPole", "--num-demos", "5", "--total-steps", "1000",
                     "--eval-every", "1000", "--log-every", "100", "--eval-episodes", "2")  # fmt: skip
    beats_random(run, "CartPole-v1")
    nll = [r["val/nll"] for r in read_metrics(run) if "val/nll" in r]
    assert nll[-1] < 0.75 * nll[0], nll
