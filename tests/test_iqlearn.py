"""IQ-Learn: loss terms against hand-computed values, the discrete soft value, CLI smoke runs of the
four mode combinations, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, heldout_expert, random_transitions, ranks_above, run_script

from cleanil import envs, iqlearn

# two expert rows and one policy row; gamma = 0.5, chi a = 0.5 (1 / (4 a) = 0.5)
Q = torch.tensor([2.0, 1.0, 0.0])
V = torch.tensor([1.0, 3.0, 2.0])
NEXT_V = torch.tensor([2.0, 4.0, 6.0])
DONE = torch.tensor([0.0, 1.0, 0.0])
EXPERT = torch.tensor([1.0, 1.0, 0.0])
# y = gamma (1 - done) V(s') = [1, 0, 3];  r = Q - y = [1, 1, -3]


def test_iq_loss_value_variant_online():
    loss, parts = iqlearn.iq_loss(Q, V, NEXT_V, DONE, EXPERT, 0.5, "value", 0.5, regularize_all=True)
    softq = -(1 + 1) / 2  # -E_E[r]
    value = ((1 - 1) + (3 - 0) + (2 - 3)) / 3  # E_all[V(s) - y]
    chi2 = 0.5 * (1 + 1 + 9) / 3  # 1 / (4 a) E_all[r^2]
    assert parts["losses/softq"].item() == pytest.approx(softq)
    assert parts["losses/value"].item() == pytest.approx(value)
    assert parts["losses/chi2"].item() == pytest.approx(chi2)
    assert loss.item() == pytest.approx(softq + value + chi2)


def test_iq_loss_v0_variant_offline():
    loss, parts = iqlearn.iq_loss(Q, V, NEXT_V, DONE, EXPERT, 0.5, "v0", 0.5, regularize_all=False)
    value = (1 - 0.5) * (1 + 3) / 2  # (1 - gamma) E_E[V(s0)]
    chi2 = 0.5 * (1 + 1) / 2  # expert rows only
    assert parts["losses/value"].item() == pytest.approx(value)
    assert parts["losses/chi2"].item() == pytest.approx(chi2)
    assert loss.item() == pytest.approx(-1 + value + chi2)


def test_iq_loss_gradient_raises_expert_q():
    q = Q.clone().requires_grad_(True)
    loss, _ = iqlearn.iq_loss(q, V, NEXT_V, DONE, EXPERT, 0.5, "v0", 100.0, regularize_all=False)
    loss.backward()
    assert (q.grad[:2] < 0).all() and q.grad[2] == 0  # descent raises Q on expert pairs only


def test_discrete_soft_value():
    q = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = [0.5 * math.log(sum(math.exp(x / 0.5) for x in row)) for row in q.tolist()]
    assert iqlearn.soft_value_discrete(q, 0.5).tolist() == pytest.approx(expected)
    assert iqlearn.soft_value_discrete(q, 1e-3)[0].item() == pytest.approx(3.0, abs=1e-2)  # -> max as alpha -> 0


def test_pearson():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert iqlearn.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert iqlearn.pearson(x, -x) == pytest.approx(-1.0)
    assert iqlearn.pearson(x, np.ones(4)) is None  # undefined for a constant side


def test_episode_sums():
    # three episodes of lengths 2, 1 and 3, as rollout records them one after the other
    reward = np.array([1.0, 2.0, 5.0, -1.0, 0.5, 0.5])
    done = np.array([False, True, True, False, False, True])
    np.testing.assert_allclose(iqlearn.episode_sums(reward, done), [3.0, 5.0, 0.0])


@pytest.mark.parametrize(
    "env,mode",
    [("CartPole", "--offline"), ("CartPole", "--no-offline"), ("Pendulum", "--offline"), ("Pendulum", "--no-offline")],
)
def test_smoke_all_modes(tmp_path, env, mode):
    res = run_cli("cleanil/iqlearn.py", "--env", env, mode, "--num-demos", "1", "--heldout-demos", "1",
                  "--total-steps", "300", "--learning-starts", "100", "--eval-every", "300", "--log-every", "100",
                  "--eval-episodes", "2", "--hidden", "32", "32", "--batch-size", "32", "--reward-episodes", "3",
                  "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    rows = read_metrics(run)
    losses = [r for r in rows if "losses/iq" in r]
    assert [r["global_step"] for r in losses] == ([100, 200, 300] if mode == "--offline" else [200, 300])
    assert all(np.isfinite(r["losses/iq"]) for r in losses)
    assert ("losses/actor" in losses[-1]) == (env == "Pendulum")
    assert "eval/normalized_return" in rows[-1]
    if env == "Pendulum":  # CartPole's reward is 1 per step: a correlation with it is undefined, not logged
        assert -1 <= rows[-1]["reward/pearson_heldout"] <= 1 and -1 <= rows[-1]["reward/pearson_episodes"] <= 1
        assert all("reward/pearson_episodes" not in r for r in rows[:-1])  # scored at the end only
    else:
        assert all("reward/pearson_heldout" not in r for r in rows)
    assert (run / "model.pt").exists() and (run / "reward.pt").exists()


def test_bad_input_gets_one_line(tmp_path):
    cases = [
        (("--env", "CartPole", "--learn-temp"), "--learn-temp applies to continuous actions only"),
        (("--env", "Pendulum", "--heldout-demos", "-1"), "--heldout-demos must be at least 0"),
        (("--env", "Pendulum", "--num-critics", "0"), "--num-critics must be at least 1"),
        (("--env", "Pendulum", "--reward-episodes", "1"), "--reward-episodes must be 0 (skip) or at least 2"),
        (("--env", "Pendulum", "--demos", str(tmp_path / "missing.npz")), "missing.npz"),
    ]
    for flags, message in cases:
        res = run_cli("cleanil/iqlearn.py", *flags, "--run-dir", str(tmp_path / "runs"))
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("offline", [False, True])
def test_update_takes_the_chi2_term_over_every_row_online_and_expert_rows_offline(offline):
    """The update calls iq_loss with regularize_all = online: online the chi-squared term covers the policy
    rows too (the authors' setting), offline the expert rows alone."""
    torch.manual_seed(0)
    spec = envs.env_spec("CartPole-v1")
    args = iqlearn.Args(env="CartPole", offline=offline, hidden=(16, 16))
    m = iqlearn.make_learner(spec, args, torch.zeros(4), torch.ones(4), torch.device("cpu"))
    n = 8
    b = {"obs": torch.randn(2 * n, 4), "act": torch.randint(2, (2 * n,)), "next_obs": torch.randn(2 * n, 4),
         "done": torch.zeros(2 * n), "is_expert": (torch.arange(2 * n) < n).float()}  # fmt: skip
    alpha = m.log_alpha.exp().detach()
    with torch.no_grad():
        q = iqlearn.q_values(m, m.critics, b["obs"], b["act"])[0]
        v, next_v = (
            iqlearn.soft_value(m, net, o, alpha) for net, o in ((m.critics, b["obs"]), (m.targets, b["next_obs"]))
        )
        expected = {
            everywhere: iqlearn.iq_loss(q, v, next_v, b["done"], b["is_expert"], args.gamma, args.value_loss,
                                        args.chi_alpha, everywhere)[1]["losses/chi2"]
            for everywhere in (False, True)
        }  # fmt: skip
    assert not torch.isclose(expected[False], expected[True])  # the two settings differ on this batch
    got = iqlearn.update(m, b, args)["losses/chi2"]
    assert torch.isclose(got, expected[not offline])


def test_iqlearn_learns_cartpole_offline(tmp_path):
    """~30 s: offline, one demonstration, 2,000 updates."""
    run = run_script(tmp_path, "cleanil/iqlearn.py", "--env", "CartPole", "--total-steps", "2000", "--eval-every",
                     "2000", "--eval-episodes", "2", "--reward-episodes", "0", "--compile", "False")  # fmt: skip
    beats_random(run, "CartPole-v1")
    spec = envs.env_spec("CartPole-v1")
    blob = torch.load(run / "reward.pt", weights_only=True)
    q_net = torch.nn.ModuleList([envs.make_actor(spec, tuple(blob["hidden"]))])
    q_net.load_state_dict(blob["critics"])
    m = iqlearn.Learner(True, q_net, q_net, q_net[0], torch.tensor([np.log(blob["alpha"])]), None, None, None)

    def rewards(data: dict) -> np.ndarray:
        return iqlearn.recovered_reward(m, iqlearn.demo_tensors(data, True, torch.device("cpu")), blob["gamma"])

    ranks_above(rewards(heldout_expert("CartPole-v1")), rewards(random_transitions("CartPole-v1")))
