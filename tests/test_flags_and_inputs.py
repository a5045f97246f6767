"""Flags mean what they say and bad input ends in one line: an explicit 0 is not 'unset', a discriminator
batch larger than the SAC batch is honoured, budgets that would run nothing are refused, and so are demo
actions outside the env's bounds, non-tanh networks under the hand-written input gradient, and envs whose
extra package is missing. A resumed run prints no torchrl INFO line."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import only_run_dir, run_cli

from cleanil import airl, gail

SAC = {"env": "Pendulum", "total_steps": 305, "learning_starts": 300, "log_every": 1, "eval_every": 305,
       "eval_episodes": 1, "hidden": (32, 32), "disc_hidden": (16, 16), "num_demos": 2, "batch_size": 32,
       "compile": False}  # fmt: skip


def record_disc_calls(monkeypatch, mod) -> list[dict]:
    """Run ``mod``'s discriminator update as usual, noting each call's batch (maybe_compile wraps every update)."""
    calls, real = [], mod.nets.maybe_compile

    def spy(fn, *args, **kwargs):
        compiled = real(fn, *args, **kwargs)
        if fn.__name__ != "update_disc":
            return compiled

        def wrapped(p):
            calls.append({"rows": len(p["obs"]), "pi_weight": p.get("pi_weight")})
            return compiled(p)

        return wrapped

    monkeypatch.setattr(mod.nets, "maybe_compile", spy)
    return calls


@pytest.mark.parametrize("mod", [gail, airl])
def test_disc_batch_larger_than_the_sac_batch_is_honoured(tmp_path, monkeypatch, mod):
    calls = record_disc_calls(monkeypatch, mod)
    mod.main(mod.Args(**SAC, disc_batch_size=80, run_dir=str(tmp_path)))
    assert len(calls) == 5 and {c["rows"] for c in calls} == {80}


@pytest.mark.parametrize("mod", [gail, airl])
def test_explicit_zero_discriminator_updates_means_none(tmp_path, monkeypatch, mod):
    calls = record_disc_calls(monkeypatch, mod)
    mod.main(mod.Args(**SAC, disc_updates=0, run_dir=str(tmp_path)))
    assert calls == []


def test_airl_explicit_zero_pi_weight_is_kept(tmp_path, monkeypatch):
    calls = record_disc_calls(monkeypatch, airl)
    airl.main(airl.Args(**SAC, pi_weight=0.0, run_dir=str(tmp_path)))
    assert calls and all(float(c["pi_weight"]) == 0.0 for c in calls)


def test_gail_absorbing_weight_zero_is_kept():
    assert gail.absorbing_weight(gail.Args(absorbing_weight=0.0, gamma=0.99)) == 0.0
    assert gail.absorbing_weight(gail.Args(absorbing_weight=None, gamma=0.99)) == pytest.approx(100.0)


@pytest.mark.parametrize("mod", [gail, airl])
def test_input_gradient_refuses_networks_other_than_tanh_mlps(mod):
    z = torch.randn(4, 3)
    for net in (
        torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)),
        torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh()),
        torch.nn.Conv1d(3, 1, 1),
    ):
        with pytest.raises(ValueError, match="tanh MLPs only"):
            mod.tanh_mlp_input_grad(net, z)
    mod.tanh_mlp_input_grad(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)), z)


def one_line_error(res, needle: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("script", "flags", "needle"),
    [
        ("cleanil/bc.py", ("--total-steps", "-5"), "--total-steps must be at least 1, got -5"),
        ("cleanil/bc.py", ("--eval-every", "0"), "--eval-every must be at least 1"),
        ("cleanil/dagger.py", ("--rounds", "0"), "--rounds"),
        ("cleanil/gail.py", ("--env", "Pendulum", "--total-steps", "500"), "no update would run"),
        ("cleanil/iqlearn.py", ("--env", "Pendulum", "--total-steps", "0"), "--total-steps must be at least 1"),
        ("cleanil/mce_irl.py", ("--env", "FrozenLake-v1", "--total-steps", "0"), "--total-steps must be at least 1"),
    ],
)
def test_budgets_that_run_nothing_are_refused(tmp_path, script, flags, needle):
    one_line_error(run_cli(script, *flags, "--run-dir", str(tmp_path)), needle)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_demo_actions_outside_the_bounds_are_refused(tmp_path):
    obs = np.zeros((3, 3), np.float32)
    demo = {"obs": obs, "actions": np.array([[0.5], [2.5], [0.0]], np.float32), "rewards": np.zeros(3, np.float32),
            "next_obs": obs, "terminated": np.zeros(3, bool), "truncated": np.array([False, False, True])}  # fmt: skip
    np.savez(tmp_path / "demos.npz", **demo)
    res = run_cli("cleanil/bc.py", "--env", "Pendulum", "--demos", str(tmp_path / "demos.npz"), "--num-demos", "1",
                  "--run-dir", str(tmp_path / "runs"))  # fmt: skip
    one_line_error(res, "actions[1, 0] = 2.5 is not in [-2, 2]")
    assert "demos.npz" in res.stderr


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is not None, reason="Box2D is installed here")
def test_env_with_a_missing_package_is_one_line(tmp_path):
    res = run_cli("cleanil/bc.py", "--env", "LunarLander-v3", "--run-dir", str(tmp_path))
    one_line_error(res, "LunarLander-v3 needs a package that is not installed: Box2D is not installed")


def test_resumed_run_prints_no_torchrl_info_line(tmp_path):
    flags = ("--env", "Pendulum", "--total-steps", "320", "--learning-starts", "300", "--eval-every", "320",
             "--eval-episodes", "1", "--num-demos", "2", "--hidden", "32", "32", "--disc-hidden", "16", "16",
             "--checkpoint-every", "310", "--compile", "False")  # fmt: skip
    assert run_cli("cleanil/gail.py", *flags, "--run-dir", str(tmp_path)).returncode == 0
    run = only_run_dir(tmp_path)
    res = run_cli("cleanil/gail.py", "--resume", str(run), "--total-steps", "330")
    assert res.returncode == 0, res.stderr
    assert "resuming at step 320" in res.stdout
    assert "torchrl" not in (res.stdout + res.stderr).lower() and "INFO" not in res.stdout + res.stderr
