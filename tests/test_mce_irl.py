"""MCE IRL: soft value iteration against brute force, occupancy identities, the gradient at the true
reward, CLI smoke runs and bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import run_script

from cleanil import envs, mce_irl

GAMMAS = (0.0, 0.5, 0.99)


def tiny_mdp(seed: int = 0, n_states: int = 3, n_actions: int = 2, deterministic: bool = False) -> tuple:
    """A random MDP whose last state is absorbing (self-loop, zero reward), as mce_irl builds them."""
    g = torch.Generator().manual_seed(seed)
    T = torch.zeros(n_states + 1, n_actions, n_states + 1, dtype=torch.float64)
    if deterministic:
        T.scatter_(2, torch.randint(n_states + 1, (n_states + 1, n_actions, 1), generator=g), 1.0)
    else:
        T[:] = torch.rand(n_states + 1, n_actions, n_states + 1, generator=g, dtype=torch.float64)
        T /= T.sum(-1, keepdim=True)
    T[-1] = 0.0
    T[-1, :, -1] = 1.0
    reward = torch.randn(n_states + 1, n_actions, generator=g, dtype=torch.float64)
    reward[-1] = 0.0
    init = torch.zeros(n_states + 1, dtype=torch.float64)
    init[:n_states] = 1.0 / n_states
    return T, mce_irl.Dynamics.from_dense(T), reward, init


def entropy_regularized_return(log_pi, T, reward, init, gamma, horizon) -> float:
    """sum_t gamma^t E[r(s_t, a_t) - log pi_t(a_t | s_t)] by an explicit forward pass over time."""
    d, total = init.clone(), 0.0
    for t in range(horizon):
        lp = log_pi[min(t, len(log_pi) - 1)]
        pi = lp.exp()
        total += gamma**t * float((d[:, None] * pi * (reward - torch.where(pi > 0, lp, 0.0))).sum())
        d = torch.einsum("sa,sap->p", d[:, None] * pi, T)
    return total


def test_soft_value_is_log_sum_over_action_sequences():
    """Deterministic dynamics, gamma = 1: V_0(s) = log sum over action sequences of exp(return)."""
    T, dyn, reward, _ = tiny_mdp(seed=1, deterministic=True)
    H, n_states, n_actions = 3, T.shape[0] - 1, T.shape[1]
    log_pi = mce_irl.value_iteration(reward, dyn, 1.0, H)
    for s0 in range(n_states):
        init = torch.nn.functional.one_hot(torch.tensor(s0), n_states + 1).double()
        soft_value = entropy_regularized_return(log_pi, T, reward, init, 1.0, H)
        terms = []
        for actions in itertools.product(range(n_actions), repeat=H):
            s, ret = s0, 0.0
            for a in actions:
                if s == n_states:  # absorbing: one action, zero reward
                    if a != 0:
                        break
                    continue
                ret += float(reward[s, a])
                s = int(T[s, a].argmax())
            else:
                terms.append(ret)
        assert soft_value == pytest.approx(math.log(sum(math.exp(r) for r in terms)), abs=1e-9)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_optimal_value_iteration_matches_brute_force_over_policies(gamma):
    """soft=False: the greedy policy's return equals the best of all deterministic time-dependent policies."""
    T, dyn, reward, init = tiny_mdp(seed=2, n_states=2)
    H, S, A = 3, T.shape[0], T.shape[1]
    best = mce_irl.value_iteration(reward, dyn, gamma, H, soft=False)
    best_return = mce_irl.expected_return(mce_irl.occupancy(best, dyn, init, gamma, H), reward)
    returns = []
    for choice in itertools.product(range(A), repeat=H * (S - 1)):
        actions = torch.tensor(choice).reshape(H, S - 1)
        actions = torch.cat([actions, torch.zeros(H, 1, dtype=torch.long)], 1)  # absorbing: action 0
        log_pi = torch.nn.functional.one_hot(actions, A).double().log()
        returns.append(mce_irl.expected_return(mce_irl.occupancy(log_pi, dyn, init, gamma, H), reward))
    assert len(returns) == A ** (H * (S - 1)) and best_return == pytest.approx(max(returns), abs=1e-12)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_soft_policy_maximizes_the_entropy_regularized_return(gamma):
    T, dyn, reward, init = tiny_mdp(seed=3)
    H = 4
    log_pi = mce_irl.value_iteration(reward, dyn, gamma, H)
    assert torch.allclose(log_pi.exp().sum(-1), torch.ones(1, dtype=torch.float64))
    value = entropy_regularized_return(log_pi, T, reward, init, gamma, H)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # any other policy does worse
        other = torch.log_softmax(log_pi + 0.3 * torch.randn(log_pi.shape, generator=g, dtype=torch.float64), -1)
        other[:, -1] = log_pi[:, -1]
        assert entropy_regularized_return(other, T, reward, init, gamma, H) < value + 1e-12


@pytest.mark.parametrize("gamma", GAMMAS)
def test_policy_rows_sum_to_one_and_occupancy_mass(gamma):
    _, dyn, reward, init = tiny_mdp(seed=4, n_states=5, n_actions=3)
    H = 7
    log_pi = mce_irl.value_iteration(reward, dyn, gamma, H)
    assert log_pi.shape == (H, 6, 3)
    torch.testing.assert_close(log_pi.exp().sum(-1), torch.ones(H, 6, dtype=torch.float64))
    rho = mce_irl.occupancy(log_pi, dyn, init, gamma, H)
    expected = H if gamma == 1 else (1 - gamma**H) / (1 - gamma)
    assert float(rho.sum()) == pytest.approx(expected, rel=1e-12)
    assert float(mce_irl.occupancy(log_pi, dyn, init, 1.0, H).sum()) == pytest.approx(H)
    stationary = mce_irl.value_iteration(reward, dyn, gamma, None)
    assert stationary.shape == (1, 6, 3)
    torch.testing.assert_close(stationary.exp().sum(-1), torch.ones(1, 6, dtype=torch.float64))
    infinite = mce_irl.occupancy(stationary, dyn, init, gamma, None)
    assert float(infinite.sum()) == pytest.approx(1 / (1 - gamma), rel=1e-9)


def test_infinite_horizon_is_a_fixed_point_of_the_soft_bellman_backup():
    _, dyn, reward, _ = tiny_mdp(seed=5)
    log_pi = mce_irl.value_iteration(reward, dyn, 0.9, None)[0]
    # pi = exp(Q - V): recover V from any action, Q = r + gamma E V' must hold with the same V
    q_minus_v = log_pi[:-1]
    V = torch.zeros(4, dtype=torch.float64)
    for _ in range(2000):
        Q = reward + 0.9 * dyn.expect(V)
        Q[-1, 1:] = -torch.inf
        V = torch.logsumexp(Q, -1)
    torch.testing.assert_close(q_minus_v, (Q - V[:, None])[:-1])


def test_gradient_vanishes_at_the_true_reward_of_a_soft_optimal_expert():
    mdp = mce_irl.random_mdp(8, 3, 3, horizon=15, seed=0)
    dyn = mce_irl.Dynamics.from_dense(mdp.transitions)
    rho_expert = mce_irl.occupancy(mce_irl.value_iteration(mdp.reward, dyn, 0.95, 15), dyn, mdp.init, 0.95, 15)
    net = mce_irl.RewardNet(mce_irl.feature_index(9, 3, "state_action"), "linear", ())

    def grad_at(table: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            net.first.weight.copy_(table.reshape(1, -1))
        reward = net()
        rho = mce_irl.occupancy(mce_irl.value_iteration(reward.detach(), dyn, 0.95, 15), dyn, mdp.init, 0.95, 15)
        net.zero_grad()
        mce_irl.mce_loss(reward, rho_expert, rho).backward()
        return net.first.weight.grad

    assert grad_at(mdp.reward).abs().max() < 1e-12
    assert grad_at(torch.zeros_like(mdp.reward)).abs().max() > 1e-3  # elsewhere it does not


def test_sampled_occupancy_converges_to_the_exact_one():
    mdp = mce_irl.random_mdp(6, 2, 2, horizon=10, seed=1)
    dyn = mce_irl.Dynamics.from_dense(mdp.transitions)
    log_pi = mce_irl.value_iteration(mdp.reward, dyn, 1.0, 10)
    exact = mce_irl.occupancy(log_pi, dyn, mdp.init, 1.0, 10)
    demos = mce_irl.sample_trajectories(log_pi, mdp, 3000, seed=0)
    empirical = mce_irl.demo_occupancy(demos, mdp, 1.0, 10)
    assert float(empirical.sum()) == pytest.approx(10.0)
    assert (empirical - exact).abs().max() < 0.1


def test_frozenlake_table_and_grid():
    mdp = mce_irl.mdp_from_env(envs.resolve_env_id("FrozenLake-v1", {"is_slippery": False}), None)
    assert mdp.transitions.shape == (17, 4, 17) and mdp.grid == (4, 4) and mdp.horizon == 100
    torch.testing.assert_close(mdp.transitions.sum(-1), torch.ones(17, 4, dtype=torch.float64))
    assert mdp.reward[14, 2] == 1.0 and mdp.transitions[14, 2, 16] == 1.0  # right of 14 is the goal: terminal


def test_cli_exact_reaches_the_targets_and_writes_outputs(tmp_path):
    res = run_cli("cleanil/mce_irl.py", "--env", "CliffWalking-v1", "--exact", "--run-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    final = read_metrics(run)[-1]
    assert final["occupancy_gap"] < 1e-3 and final["eval/normalized_return"] >= 0.99
    assert (run / "reward.png").stat().st_size > 1000 and (run / "model.pt").exists()
    saved = torch.load(run / "model.pt", weights_only=False)
    assert saved["reward"].shape == (49, 4)


@pytest.mark.parametrize(
    "flags",
    [
        ("--env", "FrozenLake-v1", "--num-demos", "20", "--reward-net", "mlp", "--features", "state"),
        ("--env", "RandomMDP", "--infinite", "--gamma", "0.9", "--num-demos", "10"),
    ],
)
def test_cli_sampled_smoke(tmp_path, flags):
    res = run_cli("cleanil/mce_irl.py", *flags, "--total-steps", "30", "--eval-every", "10", "--run-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = read_metrics(only_run_dir(tmp_path))
    assert [r["global_step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["occupancy_gap"] < rows[0]["occupancy_gap"]  # the reward updates moved toward the demos


def test_user_demo_file(tmp_path):
    mdp = mce_irl.mdp_from_env(envs.resolve_env_id("CliffWalking-v1"), None)
    dyn = mce_irl.Dynamics.from_dense(mdp.transitions)
    demos = mce_irl.sample_trajectories(mce_irl.value_iteration(mdp.reward * 100, dyn, 1.0, 100), mdp, 5, seed=0)
    np.savez(tmp_path / "cliff.npz", **demos)
    res = run_cli("cleanil/mce_irl.py", "--env", "CliffWalking-v1", "--demos", str(tmp_path / "cliff.npz"),
                  "--num-demos", "5", "--total-steps", "20", "--run-dir", str(tmp_path / "runs"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "matching 5 demonstrations" in res.stdout
    bad = {**demos, "obs": demos["obs"] + 100}
    np.savez(tmp_path / "bad.npz", **bad)
    res = run_cli("cleanil/mce_irl.py", "--env", "CliffWalking-v1", "--demos", str(tmp_path / "bad.npz"),
                  "--run-dir", str(tmp_path / "runs"))  # fmt: skip
    assert res.returncode == 2 and "must hold integer 'obs' in [0, 48)" in res.stderr


def test_env_without_a_table_is_one_line(tmp_path):
    res = run_cli("cleanil/mce_irl.py", "--env", "CartPole", "--run-dir", str(tmp_path))
    assert res.returncode == 2, res.stdout
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "mce_irl needs known dynamics: CartPole-v1 has no transition table P" in res.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"env_kwargs": "{slippery"}, "--env-kwargs is not valid JSON"),
        ({"env_kwargs": '{"no_such_arg": 1}'}, "--env-kwargs do not fit FrozenLake-v1"),
        ({"infinite": True}, r"--infinite needs --gamma in \[0, 1\)"),
        ({"expert_temperature": 0.0}, "--expert-temperature must be positive"),
        ({"env": "NoSuchEnv"}, "unknown environment 'NoSuchEnv'"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, changes, needle):
    args = mce_irl.Args(**{"env": "FrozenLake-v1", "run_dir": str(tmp_path), **changes})
    with pytest.raises(envs.CleanILError, match=needle):
        mce_irl.main(args)
    assert not any(tmp_path.iterdir())


def test_mce_irl_learns_frozenlake(tmp_path):
    """~10 s: exact occupancies; evaluation is exact, so no sampling test is needed."""
    run = run_script(tmp_path, "cleanil/mce_irl.py", "--env", "FrozenLake-v1", "--exact")
    rows = [r for r in read_metrics(run) if "occupancy_gap" in r]
    assert rows[-1]["occupancy_gap"] < 0.1 * rows[0]["occupancy_gap"] and rows[-1]["eval/normalized_return"] >= 0.9
