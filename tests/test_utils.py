"""Unit tests of the shared plumbing: aliases, experts, scores, demos, rollouts, actors."""

from __future__ import annotations

import copy
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from cleanil import envs, nets

SHIPPED = sorted(p.stem for p in envs.EXPERT_DIR.glob("*.json"))


def test_aliases_and_full_ids():
    assert envs.resolve_env_id("HalfCheetah") == "HalfCheetah-v5"
    assert envs.resolve_env_id("CartPole") == "CartPole-v1"
    assert envs.resolve_env_id("Pendulum-v1") == "Pendulum-v1"
    for alias, env_id in envs.ENV_ALIASES.items():
        assert envs.resolve_env_id(alias) == env_id and env_id in gym.registry
    with pytest.raises(envs.CleanILError, match="unknown environment 'NoSuchEnv'"):
        envs.resolve_env_id("NoSuchEnv")


def test_env_spec():
    cart, pend = envs.env_spec("CartPole-v1"), envs.env_spec("Pendulum-v1")
    assert (cart.discrete, cart.obs_dim, cart.act_dim) == (True, 4, 2)
    assert (pend.discrete, pend.obs_dim, pend.act_dim) == (False, 3, 1)
    np.testing.assert_allclose(pend.action_high, [2.0])


@pytest.mark.parametrize("env_id", SHIPPED)
def test_shipped_expert_loads_and_metadata_validates(env_id):
    meta = envs.load_expert_metadata(env_id)
    assert meta["eval_episodes"] >= 50
    assert meta["return_mean"] > meta["random_return_mean"]
    actor = envs.load_expert(env_id)
    spec = envs.env_spec(env_id)
    obs = torch.zeros(3, spec.obs_dim)
    assert actor.act(obs).shape[0] == 3


def test_classic_experts_are_shipped():
    assert {"CartPole-v1", "Pendulum-v1"} <= set(SHIPPED)


def test_normalized_score():
    meta = envs.load_expert_metadata("CartPole-v1")
    assert envs.normalized_score(meta["return_mean"], "CartPole-v1") == pytest.approx(1.0)
    assert envs.normalized_score(meta["random_return_mean"], "CartPole-v1") == pytest.approx(0.0)
    mid = (meta["return_mean"] + meta["random_return_mean"]) / 2
    assert envs.normalized_score(mid, "CartPole-v1") == pytest.approx(0.5)
    assert envs.normalized_score(1.0, "FrozenLake-v1") is None  # no expert ships for it


def test_bad_expert_metadata_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(envs, "EXPERT_DIR", tmp_path)
    with pytest.raises(envs.CleanILError, match="no expert for CartPole-v1"):
        envs.load_expert_metadata("CartPole-v1")
    (tmp_path / "CartPole-v1.json").write_text(json.dumps({"env_id": "CartPole-v1"}))
    with pytest.raises(envs.CleanILError, match="lacks a valid 'algo' field"):
        envs.load_expert_metadata("CartPole-v1")


@pytest.fixture(scope="module")
def cartpole_demos():
    return envs.load_demos("CartPole-v1", 3)


def test_generated_demos_are_valid_and_expert_level(cartpole_demos):
    spec = envs.env_spec("CartPole-v1")
    data = envs.validate_demos(cartpole_demos, spec, "generated")
    ends = np.flatnonzero(data["terminated"] | data["truncated"])
    assert len(ends) == 3
    returns = np.split(data["rewards"], ends[:-1] + 1)
    meta = envs.load_expert_metadata("CartPole-v1")
    assert np.mean([r.sum() for r in returns]) >= 0.9 * meta["return_mean"]


def test_demo_generation_is_deterministic_and_prefix_stable():
    a = envs.generate_demos("Pendulum-v1", 2, seed=0)
    b = envs.generate_demos("Pendulum-v1", 12, seed=0)  # crosses a rollout chunk
    n = len(a["obs"])
    for k in envs.DEMO_KEYS:
        np.testing.assert_array_equal(a[k], b[k][:n])
    c = envs.generate_demos("Pendulum-v1", 2, seed=1)
    assert not np.array_equal(a["obs"], c["obs"])


def _bad(data: dict, **changes) -> dict:
    return {**{k: v.copy() for k, v in data.items()}, **changes}


def test_demo_validation_errors(cartpole_demos):
    spec, d = envs.env_spec("CartPole-v1"), cartpole_demos
    cases = {
        "lacks the array": {k: v for k, v in d.items() if k != "rewards"},
        r"has 'obs' of shape \(5,\)": _bad(d, obs=np.concatenate([d["obs"], d["obs"][:, :1]], 1)),
        "NaN or infinite values in 'obs'": _bad(
            d, obs=np.where(np.arange(len(d["obs"]))[:, None] == 7, np.nan, d["obs"])
        ),
        "integer actions": _bad(d, actions=d["actions"] + 5),
        "ends in the middle of an episode": _bad(
            d, terminated=np.zeros_like(d["terminated"]), truncated=np.zeros_like(d["truncated"])
        ),  # fmt: skip
        "differ in length": _bad(d, rewards=d["rewards"][:-1]),
    }
    for message, data in cases.items():
        with pytest.raises(envs.CleanILError, match=message):
            envs.validate_demos(data, spec, "f.npz")
    shuffled = _bad(d, next_obs=d["next_obs"][::-1].copy())
    with pytest.raises(envs.CleanILError, match="differs from the following obs"):
        envs.validate_demos(shuffled, spec, "f.npz")


def test_demo_file_roundtrip_and_file_errors(tmp_path, cartpole_demos):
    spec = envs.env_spec("CartPole-v1")
    path = tmp_path / "demos.npz"
    envs.save_demo_file(path, cartpole_demos)
    loaded = envs.load_demo_file(path, spec)
    for k in envs.DEMO_KEYS:
        np.testing.assert_array_equal(loaded[k], cartpole_demos[k])
    one = envs.load_demos("CartPole-v1", 1, str(path))
    assert (one["terminated"] | one["truncated"]).sum() == 1
    with pytest.raises(envs.CleanILError, match="holds 3 episode"):
        envs.load_demos("CartPole-v1", 4, str(path))
    with pytest.raises(envs.CleanILError, match="does not exist"):
        envs.load_demo_file(tmp_path / "missing.npz", spec)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(envs.CleanILError, match="could not be read as .npz"):
        envs.load_demo_file(corrupt, spec)
    with pytest.raises(envs.CleanILError, match=r"but Pendulum-v1 observations have shape \(3,\)"):
        envs.load_demo_file(path, envs.env_spec("Pendulum-v1"))


def test_same_step_autoreset_final_obs():
    """The true last observation of an episode is kept, not the next episode's first one."""
    vec_env = envs.make_vec_env("CartPole-v1", 2)
    obs, _ = vec_env.reset(seed=[0, 1])
    for _ in range(500):
        next_obs, _, term, trunc, info = vec_env.step(np.zeros(2, dtype=np.int64))  # always push left: falls fast
        real = envs.true_next_obs(next_obs, info)
        if (term | trunc).any():
            i = int(np.flatnonzero(term | trunc)[0])
            assert abs(real[i][2]) > 0.2095 or abs(real[i][0]) > 2.4  # the failure state, not a reset
            assert abs(next_obs[i]).max() <= 0.05  # the env already reset (SAME_STEP)
            break
        np.testing.assert_array_equal(real, next_obs)
    else:
        pytest.fail("CartPole never terminated")


def test_rollout_transitions_chain_and_terminate():
    actor = envs.load_expert("Pendulum-v1")
    out = envs.rollout(envs.numpy_policy(actor, torch.device("cpu")), "Pendulum-v1", 2, seed=5, record=True)
    t = out["transitions"]
    assert len(t["obs"]) == 400 and t["truncated"].sum() == 2
    np.testing.assert_array_equal(t["next_obs"][:199], t["obs"][1:200])
    np.testing.assert_allclose(out["returns"], [t["rewards"][:200].sum(), t["rewards"][200:].sum()], rtol=1e-5)


def test_tanh_gaussian_log_prob_matches_torch_distribution():
    torch.manual_seed(0)
    actor = nets.TanhGaussianActor(3, 2, [-2.0, -1.0], [2.0, 3.0], hidden=(8,))
    obs = torch.randn(5, 3)
    mean, log_std = actor(obs)
    base = torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1)
    ref = torch.distributions.TransformedDistribution(
        base, [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(actor.bias, actor.scale)]
    )
    u = torch.randn(5, 2)
    a = actor.bias + actor.scale * torch.tanh(u)
    torch.testing.assert_close(actor.log_prob_of_pre_tanh(u, mean, log_std), ref.log_prob(a), rtol=1e-4, atol=1e-4)
    action, _ = actor.sample(obs)
    assert (action >= torch.tensor([-2.0, -1.0])).all() and (action <= torch.tensor([2.0, 3.0])).all()


def test_policy_save_load_roundtrip(tmp_path):
    spec = envs.env_spec("Pendulum-v1")
    actor = envs.make_actor(spec, (16,))
    actor.norm.mean.fill_(0.5)
    envs.save_policy(tmp_path / "p.pt", actor, spec, (16,))
    back = envs.load_policy(tmp_path / "p.pt", spec)
    obs = torch.randn(4, 3)
    torch.testing.assert_close(back.act(obs), actor.act(obs))
    with pytest.raises(envs.CleanILError, match="does not fit CartPole-v1"):
        envs.load_policy(tmp_path / "p.pt", envs.env_spec("CartPole-v1"))


def test_replay_buffer_roundtrip():
    rb = nets.make_replay_buffer(100, 8, torch.device("cpu"))
    rb.extend(nets.to_tensordict({"obs": np.ones((10, 3), np.float32), "act": np.arange(10)}, torch.device("cpu")))
    batch = rb.sample()
    assert batch["obs"].shape == (8, 3) and batch["act"].max() < 10 and len(rb) == 10


def test_normalized_score_is_affine():
    meta = envs.load_expert_metadata("Pendulum-v1")
    lo, hi = meta["random_return_mean"], meta["return_mean"]
    for r in (-1500.0, -150.0, 0.0):
        assert envs.normalized_score(r, "Pendulum-v1") == pytest.approx((r - lo) / (hi - lo))
        assert math.isfinite(envs.normalized_score(r, "Pendulum-v1"))


def test_twin_q_network_is_two_independent_mlps():
    """Each of the batched twins computes what an nn.Linear MLP with its weights computes."""
    torch.manual_seed(0)
    twin = nets.TwinQNetwork(3, 2, (8, 4))
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    q = twin(obs, act)
    assert q.shape == (2, 5)
    for j in range(2):
        single = nets.mlp(3 + 2, 1, (8, 4))
        with torch.no_grad():
            for layer, w, b in zip([m for m in single if isinstance(m, torch.nn.Linear)], twin.weights,
                                   twin.biases, strict=True):  # fmt: skip
                layer.weight.copy_(w[j].T)
                layer.bias.copy_(b[j, 0])
        assert torch.allclose(q[j], single(torch.cat([obs, act], -1)).squeeze(-1), atol=1e-6)
    assert not torch.allclose(q[0], q[1])  # initialized independently


def test_twin_q_network_layer_norm():
    """With layer_norm, each twin normalizes its hidden units (zero mean, unit variance before scale and
    shift), and matches an MLP with nn.LayerNorm between its linear layers and ReLUs."""
    torch.manual_seed(0)
    twin = nets.TwinQNetwork(3, 2, (8, 4), layer_norm=True)
    with torch.no_grad():
        for scale, shift in zip(twin.ln_scales, twin.ln_shifts, strict=True):
            scale.uniform_(0.5, 2.0)
            shift.uniform_(-0.5, 0.5)
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    q = twin(obs, act)
    for j in range(2):
        layers = []
        for k, (w, b) in enumerate(zip(twin.weights, twin.biases, strict=True)):
            linear = torch.nn.Linear(*w.shape[1:])
            with torch.no_grad():
                linear.weight.copy_(w[j].T)
                linear.bias.copy_(b[j, 0])
            layers.append(linear)
            if k < len(twin.weights) - 1:
                norm = torch.nn.LayerNorm(w.shape[2])
                with torch.no_grad():
                    norm.weight.copy_(twin.ln_scales[k][j, 0])
                    norm.bias.copy_(twin.ln_shifts[k][j, 0])
                layers += [norm, torch.nn.ReLU()]
        assert torch.allclose(q[j], torch.nn.Sequential(*layers)(torch.cat([obs, act], -1)).squeeze(-1), atol=1e-5)
    assert sum(p.numel() for p in twin.parameters()) == sum(
        p.numel() for p in nets.TwinQNetwork(3, 2, (8, 4)).parameters()) + 2 * 2 * (8 + 4)  # fmt: skip


def test_foreach_adam_follows_torch_adam():
    """nets.Adam (compilable) takes the same steps as torch.optim.Adam with default settings."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    b = copy.deepcopy(a)
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=1e-2), nets.Adam(b.parameters(), 1e-2)
    for _ in range(50):
        x, y = torch.randn(32, 5), torch.randn(32)
        loss_a = (a(x).squeeze(-1) - y).pow(2).mean()
        opt_a.zero_grad()
        loss_a.backward()
        opt_a.step()
        opt_b.descend((b(x).squeeze(-1) - y).pow(2).mean())
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)
