"""BCO: the inverse-dynamics likelihood against hand-computed values, its input, the BCO(alpha) schedule, an
inverse model that recovers the actions of hand-made dynamics, CLI smoke runs, bad input and a learning check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, run_script

from cleanil import bco, nets


def test_discrete_likelihood_by_hand():
    logits, actions = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]), torch.tensor([1, 0])
    out = bco.nll_discrete(logits, actions, ent_weight=0.5)
    # p = [1/4, 3/4] and [1/2, 1/2]: nll = -(log 3/4 + log 1/2) / 2
    nll = -(math.log(0.75) + math.log(0.5)) / 2
    entropy = (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2)) / 2
    assert out["nll"].item() == pytest.approx(nll)
    assert out["entropy"].item() == pytest.approx(entropy)
    assert out["loss"].item() == pytest.approx(nll - 0.5 * entropy)


def test_continuous_likelihood_by_hand():
    """A tanh-Gaussian with mean 0.3 and log-std -0.5 at every input, on the box [-2, 2]."""
    model = nets.TanhGaussianActor(2, 1, np.array([-2.0]), np.array([2.0]), (4,))
    with torch.no_grad():
        for p in model.net.parameters():
            p.zero_()
        mean, log_std_raw = 0.3, -0.5  # the head's second output maps into the log-std range through tanh
        lo, hi = model.log_std_range
        model.net[-1].bias.copy_(torch.tensor([mean, math.atanh(2 * (log_std_raw - lo) / (hi - lo) - 1)]))
    a = torch.tensor([[1.0], [-0.4]])
    out = bco.nll_continuous(model, torch.zeros(2, 2), a, ent_weight=0.0)
    sigma = math.exp(log_std_raw)
    want = []
    for x in (1.0, -0.4):
        u = math.atanh(x / 2)
        log_n = -0.5 * ((u - mean) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
        want.append(log_n - math.log(2 * (1 - math.tanh(u) ** 2)))  # change of variables a = 2 tanh(u)
    assert out["nll"].item() == pytest.approx(-sum(want) / 2, rel=1e-5)
    assert out["entropy"].item() == pytest.approx(log_std_raw + 0.5 * math.log(2 * math.pi * math.e), rel=1e-5)


def test_the_inverse_model_reads_the_state_and_its_change():
    s, s2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5, 1.0]])
    assert bco.transition_input(s, s2).tolist() == [[1.0, 2.0, 0.5, -1.0]]


@pytest.mark.parametrize(
    "pre,alpha,total,fits",
    [(10, 0.5, 22, [10, 15, 20, 22]), (10, 1.0, 30, [10, 20, 30]), (10, 0.0, 10, [10]), (10, 0.01, 12, [10, 11, 12])],
)
def test_bco_alpha_fits_after_the_pre_demonstration_steps_then_every_alpha_of_them(pre, alpha, total, fits):
    assert bco.fit_iterations(bco.Args(pre_steps=pre, alpha=alpha, total_steps=total)) == fits


@pytest.mark.parametrize("discrete", [True, False])
def test_inverse_dynamics_recovers_the_actions_of_hand_made_dynamics(discrete):
    """s' = s + B a on a hand-made batch: minimizing the likelihood loss labels unseen transitions correctly."""
    torch.manual_seed(0)
    n, B = 2000, torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    s = torch.randn(n, 2)
    if discrete:  # two actions: a step left or right along the first axis
        a = torch.randint(2, (n,))
        s2 = s + torch.stack([2.0 * a - 1, torch.zeros(n)], 1)
    else:
        a = torch.rand(n, 2) * 2 - 1
        s2 = s + a @ B.T
    model = nets.make_actor(4, 2, discrete, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), (64, 64))
    opt = nets.Adam(model.parameters(), 3e-3)
    x = bco.transition_input(s, s2)
    for _ in range(600):
        idx = torch.randint(n, (128,))
        opt.descend(bco.nll(model, x[idx], a[idx], discrete, 0.0)["loss"])
    s_test = torch.randn(200, 2)
    if discrete:
        a_test = torch.randint(2, (200,))
        s2_test = s_test + torch.stack([2.0 * a_test - 1, torch.zeros(200)], 1)
        assert (model.act(bco.transition_input(s_test, s2_test)) == a_test).float().mean() > 0.97
    else:
        a_test = torch.rand(200, 2) * 1.6 - 0.8
        guess = model.act(bco.transition_input(s_test, s_test + a_test @ B.T))
        assert (guess - a_test).abs().mean() < 0.1


@pytest.mark.parametrize("env", ["CartPole", "Pendulum"])
def test_smoke(tmp_path, env):
    res = run_cli("cleanil/bco.py", "--env", env, "--num-demos", "2", "--total-steps", "300", "--pre-steps", "100",
                  "--alpha", "1", "--inverse-updates", "20", "--policy-updates", "20", "--eval-every", "200",
                  "--eval-episodes", "2", "--hidden", "32", "32", "--inverse-hidden", "32", "32", "--batch-size",
                  "32", "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    rows = read_metrics(run)
    fits = [r for r in rows if "inverse/nll" in r]
    assert [(r["global_step"], r["interaction"]) for r in fits] == [(100, 100), (200, 200), (300, 300)]
    assert all(np.isfinite(r["inverse/nll"]) and np.isfinite(r["policy/nll"]) for r in fits)
    assert [r["global_step"] for r in rows if "eval/return" in r] == [200, 300]
    assert (run / "model.pt").exists() and (run / "inverse_model.pt").exists()


@pytest.mark.parametrize(
    "flags,needle",
    [
        (("--alpha", "-1"), "--alpha must be at least 0"),
        (("--pre-steps", "500", "--total-steps", "400"), "--pre-steps 500 exceeds --total-steps 400"),
        (("--inverse-updates", "0"), "--inverse-updates must be at least 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, flags, needle):
    res = run_cli("cleanil/bco.py", "--env", "Pendulum", *flags, "--run-dir", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr
    assert not any(tmp_path.iterdir())


def test_bco_zero_interacts_only_before_the_demonstrations(tmp_path):
    res = run_cli("cleanil/bco.py", "--env", "CartPole", "--num-demos", "2", "--alpha", "0", "--pre-steps", "150",
                  "--total-steps", "1000", "--inverse-updates", "5", "--policy-updates", "5", "--eval-episodes", "1",
                  "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "BCO(0) interacts for --pre-steps 150 steps only" in res.stdout
    rows = read_metrics(only_run_dir(tmp_path))
    assert max(r["env_steps"] for r in rows) == 150 and sum("inverse/nll" in r for r in rows) == 1


def test_bco_learns_cartpole(tmp_path):
    """~30 s: 2,000 random steps, then one fit (BCO(0)), from the expert's states alone."""
    run = run_script(tmp_path, "cleanil/bco.py", "--env", "CartPole", "--alpha", "0", "--pre-steps", "2000",
                     "--inverse-updates", "1000", "--policy-updates", "1000", "--eval-episodes", "2",
                     "--compile", "False")  # fmt: skip
    beats_random(run, "CartPole-v1")
