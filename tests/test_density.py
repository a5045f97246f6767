"""Density-based reward: the kernel density against a brute-force Gaussian-kernel sum for each of s / sa /
ss, its floor and clipped reward, the --ratio reward and its refits, CLI smoke runs for both generators,
bad input, and a learning check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, run_script

from cleanil import density

OBS = torch.tensor([[0.0, 1.0], [1.0, 0.5], [2.0, -1.0], [0.5, 0.0]])
ACT = torch.tensor([[0.2], [-0.4], [0.9], [0.0]])
NEXT = torch.tensor([[1.0, 0.5], [2.0, -1.0], [2.5, -2.0], [0.7, 0.1]])


def brute_log_density(points: np.ndarray, x: np.ndarray, h: float, skip: int | None = None) -> float:
    """log (1/n) sum_i N(z; z_i, h^2 I) with z standardized by the points' mean and (sample) std."""
    mean, std = points.mean(0), points.std(0, ddof=1)
    z, q = (points - mean) / std, (x - mean) / std
    terms = [(2 * math.pi * h**2) ** (-len(q) / 2) * math.exp(-((q - zi) ** 2).sum() / (2 * h**2))
             for i, zi in enumerate(z) if i != skip]  # fmt: skip
    return math.log(sum(terms) / len(terms))


@pytest.mark.parametrize("on,dim", [("s", 2), ("sa", 3), ("ss", 4)])
def test_log_density_matches_a_brute_force_kernel_sum(on, dim):
    x = density.features(OBS, ACT, NEXT, on)
    assert x.shape == (4, dim)
    kde = density.KernelDensity(x, x.mean(0), x.std(0), bandwidth=None)
    assert kde.h == pytest.approx(4 ** (-1 / (dim + 4)))  # Scott's rule on standardized data
    queries = torch.cat([x[:2] + 0.1, torch.zeros(1, dim)])
    got = kde.log_density(queries)
    for q, g in zip(queries.numpy(), got, strict=True):
        assert g.item() == pytest.approx(brute_log_density(x.numpy(), q, kde.h), rel=1e-5)
    # the floor: the lowest leave-one-out log-density of the model's own points
    loo = [brute_log_density(x.numpy(), x[i].numpy(), kde.h, skip=i) for i in range(4)]
    assert kde.floor.item() == pytest.approx(min(loo), rel=1e-5)
    # chunks give the same numbers
    assert torch.allclose(kde.log_density(queries, chunk=1), got)


def test_reward_is_shifted_by_the_floor_and_clipped_at_zero():
    x = density.features(OBS, ACT, NEXT, "sa")
    kde = density.KernelDensity(x, x.mean(0), x.std(0), bandwidth=0.5)
    near, far = x[:1], torch.full((1, 3), 100.0)
    assert kde.reward(near).item() == pytest.approx((kde.log_density(near) - kde.floor).item())
    assert kde.reward(near).item() > 0 and kde.reward(far).item() == 0.0


def test_ratio_subtracts_the_agents_density_refitted_on_schedule():
    args = density.Args(ratio=True, policy_samples=3, refit_every=10, bandwidth=0.5)
    x = density.features(OBS, ACT, NEXT, "sa")
    r = density.DensityReward(x, args)
    agent = torch.tensor([[1.0, 0.5, -0.4], [1.1, 0.4, -0.3], [0.9, 0.6, -0.5]])
    r.observe(agent[:2], step=1)  # the first observation fits p_pi at once
    first = r.agent
    assert first is not None and len(first.z) == 2
    r.observe(agent[2:], step=5)  # not due before step 10
    assert r.agent is first
    r.observe(agent[:1], step=10)  # due: refit on the ring of the 3 most recent rows
    assert r.agent is not first and len(r.agent.z) == 3 and int(r.seen) == 4
    q = agent[:1]
    assert r(q).item() == pytest.approx((r.expert.reward(q) - r.agent.reward(q)).item())
    plain = density.DensityReward(x, density.Args(ratio=False, bandwidth=0.5))
    plain.observe(agent, step=10)
    assert plain.agent is None and torch.equal(plain(q), plain.expert.reward(q))


@pytest.mark.parametrize(
    "env,flags",
    [
        ("CartPole", ("--num-envs", "2", "--num-steps", "64", "--eval-every", "128", "--density-on", "ss")),
        (
            "Pendulum",
            (
                "--learning-starts",
                "100",
                "--eval-every",
                "300",
                "--ratio",
                "--refit-every",
                "100",
                "--policy-samples",
                "50",
            ),
        ),  # fmt: skip
    ],
)
def test_smoke(tmp_path, env, flags):
    res = run_cli("cleanil/density.py", "--env", env, "--num-demos", "2", "--total-steps", "300", "--log-every",
                  "100", "--eval-episodes", "2", "--hidden", "32", "32", "--batch-size", "32", *flags,
                  "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "bandwidth" in res.stdout
    run = only_run_dir(tmp_path)
    rows = read_metrics(run)
    key = "losses/critic" if env == "Pendulum" else "losses/policy"
    assert any(key in r and np.isfinite(r[key]) for r in rows) and any("reward_mean" in r for r in rows)
    assert "eval/normalized_return" in rows[-1]
    assert (run / "model.pt").exists() and (run / "density.pt").exists()


@pytest.mark.parametrize(
    "flags,needle",
    [
        (("--env", "CartPole", "--generator", "sac"), "--generator sac needs continuous actions"),
        (("--bandwidth", "0"), "--bandwidth must be positive"),
        (("--ratio", "--policy-samples", "1"), "--ratio needs --policy-samples >= 2"),
    ],
)
def test_bad_input_is_one_line(tmp_path, flags, needle):
    res = run_cli("cleanil/density.py", *flags, "--run-dir", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr


def test_density_learns_cartpole(tmp_path):
    """~30 s: PPO on the expert's state-action density, 50k env steps (configs/density/CartPole-v1.yaml)."""
    run = run_script(tmp_path, "cleanil/density.py", "--env", "CartPole", "--total-steps", "50000",
                     "--eval-every", "50000", "--eval-episodes", "2")  # fmt: skip
    beats_random(run, "CartPole-v1")
