"""SQIL: its rewards and balanced batches, the soft Bellman loss against hand-computed values, absorbing
states, CLI smoke runs for discrete and continuous actions, bad input, and a learning check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, run_script

from cleanil import nets, sqil


def test_rewards_are_one_on_expert_rows_and_zero_on_the_agents():
    r = sqil.sqil_rewards(3, 2, torch.device("cpu"))
    assert r.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_soft_bellman_loss_by_hand():
    # two critics, three rows: y = r + gamma mask V(s'), gamma = 0.5
    q = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    reward, next_v, mask = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([2.0, 4.0, 6.0]), torch.tensor([1.0, 0.0, 1.0])
    # y = [1 + 1, 1 + 0, 0 + 3] = [2, 1, 3]; errors [0, 0, -3] and [-1, 0, -2]
    got = sqil.soft_bellman_loss(q, reward, next_v, mask, 0.5)
    assert got.item() == pytest.approx(9 / 3 + 5 / 3)


def test_soft_value_discrete_is_the_soft_maximum():
    q = torch.tensor([[1.0, 2.0, 3.0]])
    assert sqil.soft_value_discrete(q, torch.tensor(0.5)).item() == pytest.approx(
        0.5 * math.log(sum(math.exp(x / 0.5) for x in (1, 2, 3)))
    )


def test_with_absorbing_adds_the_absorbing_rows():
    obs, act = np.array([[1.0], [2.0], [3.0]]), np.array([[0.5], [0.6], [0.7]])
    next_obs, term = np.array([[2.0], [3.0], [9.0]]), np.array([False, False, True])
    rows = sqil.with_absorbing(obs, act, next_obs, term, True)
    # the terminating row now leads to s_abs (zeroed, flagged), which loops on itself with action 0
    np.testing.assert_array_equal(rows["obs"][:, 0], [1, 2, 3, 0])
    np.testing.assert_array_equal(rows["next_obs"][:, 0], [2, 3, 0, 0])
    np.testing.assert_array_equal(rows["flag"], [0, 0, 0, 1])
    np.testing.assert_array_equal(rows["next_flag"], [0, 0, 1, 1])
    np.testing.assert_array_equal(rows["act"][:, 0], np.float32([0.5, 0.6, 0.7, 0]))
    np.testing.assert_array_equal(rows["mask"], [1, 1, 1, 1])  # every row bootstraps
    plain = sqil.with_absorbing(obs, act, next_obs, term, False)
    np.testing.assert_array_equal(plain["mask"], [1, 1, 0])
    assert len(plain["obs"]) == 3 and not plain["next_flag"].any()


def test_the_absorbing_state_has_its_own_q_value():
    net = nets.TwinQNetwork(2, 1, (8,))
    critic = sqil.Critic(net, 2)
    with torch.no_grad():
        critic.q_abs.copy_(torch.tensor([[5.0], [7.0]]))
    obs, act, flag = torch.randn(3, 2), torch.randn(3, 1), torch.tensor([0.0, 1.0, 0.0])
    q = critic(obs, act, flag)
    assert q.shape == (2, 3) and q[:, 1].tolist() == [5.0, 7.0]
    assert torch.equal(q[:, [0, 2]], net(obs, act)[:, [0, 2]])


@pytest.mark.parametrize("env", ["CartPole", "Pendulum"])
def test_batches_are_half_expert_rows_with_reward_one(tmp_path, monkeypatch, env):
    """The update sees balanced batches: the first half are expert transitions (reward 1), the rest the agent's."""
    batches, real = [], nets.maybe_compile

    def spy(fn, *args, **kwargs):
        compiled = real(fn, *args, **kwargs)
        return lambda b: batches.append(b) or compiled(b)

    monkeypatch.setattr(sqil.nets, "maybe_compile", spy)
    args = sqil.Args(env=env, total_steps=120, learning_starts=100, eval_every=120, eval_episodes=1, num_demos=2,
                     batch_size=16, hidden=(16, 16), compile=False, run_dir=str(tmp_path))  # fmt: skip
    sqil.main(args)
    assert len(batches) == 20
    demos = sqil.envs.load_demos(sqil.envs.resolve_env_id(env), 2)
    expert_obs = {tuple(np.float32(o)) for o in demos["obs"]}
    for b in batches:
        assert b["reward"].tolist() == [1.0] * 8 + [0.0] * 8
        real_rows = b["flag"][:8] == 0
        assert all(tuple(o.tolist()) in expert_obs for o in b["obs"][:8][real_rows])


@pytest.mark.parametrize("env", ["CartPole", "Pendulum"])
def test_smoke(tmp_path, env):
    res = run_cli("cleanil/sqil.py", "--env", env, "--num-demos", "2", "--total-steps", "300", "--learning-starts",
                  "100", "--eval-every", "300", "--log-every", "100", "--eval-episodes", "2", "--hidden", "32", "32",
                  "--batch-size", "32", "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    rows = read_metrics(run)
    losses = [r for r in rows if "losses/critic" in r]
    assert [r["global_step"] for r in losses] == [200, 300] and all(np.isfinite(r["losses/critic"]) for r in losses)
    assert ("losses/actor" in losses[-1]) == (env == "Pendulum")
    assert "eval/normalized_return" in rows[-1] and (run / "model.pt").exists()


@pytest.mark.parametrize(
    "flags,needle",
    [
        (("--batch-size", "1"), "--batch-size must be at least 2"),
        (("--alpha", "0"), "--alpha positive"),
        (("--learning-starts", "500", "--total-steps", "400"), "--learning-starts 500 is not below --total-steps"),
    ],
)
def test_bad_input_is_one_line(tmp_path, flags, needle):
    res = run_cli("cleanil/sqil.py", "--env", "Pendulum", *flags, "--run-dir", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr


def test_sqil_learns_cartpole(tmp_path):
    """~40 s: 4,000 env steps, updates from step 1,000."""
    run = run_script(tmp_path, "cleanil/sqil.py", "--env", "CartPole", "--num-demos", "10", "--total-steps", "4000",
                     "--learning-starts", "1000", "--eval-every", "4000", "--eval-episodes", "2",
                     "--compile", "False")  # fmt: skip
    beats_random(run, "CartPole-v1")
    rows = [r for r in read_metrics(run) if "q_expert" in r]
    assert rows[-1]["q_expert"] > rows[-1]["q_agent"]  # expert rows carry the reward


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_next_value_of_the_absorbing_state_is_its_own_q(env_id):
    """V(s_abs) = min_j Q'_j(s_abs) with no entropy term; other next states get the soft value."""
    spec = sqil.envs.env_spec(env_id)
    args = sqil.Args(hidden=(8,))
    m = sqil.make_learner(spec, args, torch.zeros(spec.obs_dim), torch.ones(spec.obs_dim), torch.device("cpu"))
    with torch.no_grad():
        m.target.q_abs.copy_(torch.tensor([[4.0], [3.0]][: len(m.target.q_abs)]))
    b = {"next_obs": torch.randn(2, spec.obs_dim), "next_flag": torch.tensor([1.0, 0.0])}
    alpha = torch.tensor(0.1)
    v = sqil.next_value(m, b, alpha)
    assert v[0].item() == (4.0 if spec.discrete else 3.0)
    if spec.discrete:
        assert v[1].item() == pytest.approx(sqil.soft_value_discrete(m.target.net(b["next_obs"][1:]), alpha).item())
