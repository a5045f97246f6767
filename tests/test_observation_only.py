"""Demonstrations without actions: collect_demos.py --no-actions, the file's round trip and validation, the
algorithms that accept it (gail.py --observation-only, bco.py, density.py on s or ss) and those that refuse
it in one line, and GAIfO learning Pendulum from states alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, random_transitions, ranks_above, run_script

from cleanil import envs, gail


@pytest.fixture(scope="module")
def action_free(tmp_path_factory) -> dict:
    """Pendulum and CartPole demo files of observations alone, written by collect_demos.py --no-actions."""
    out = {}
    for env in ("Pendulum", "CartPole"):
        path = tmp_path_factory.mktemp("demos") / f"{env}.npz"
        res = run_cli("scripts/collect_demos.py", "--env", env, "--num-demos", "3", "--no-actions", "--out", str(path))
        assert res.returncode == 0, res.stderr
        assert "episodes of observations alone" in res.stdout
        out[env] = str(path)
    return out


def test_the_file_round_trips_without_actions(action_free):
    with np.load(action_free["Pendulum"]) as f:
        assert "actions" not in f.files and {"obs", "next_obs", "rewards", "terminated", "truncated"} <= set(f.files)
    data = envs.load_demos("Pendulum-v1", None, action_free["Pendulum"], actions=False)
    full = envs.load_demos("Pendulum-v1", 3)  # the same episodes from the expert, actions included
    assert "actions" not in data and len(envs.episode_ends(data)) == 3
    for k in ("obs", "next_obs", "rewards", "terminated", "truncated"):
        np.testing.assert_array_equal(data[k], full[k])
    assert "actions" not in envs.load_demos("Pendulum-v1", 3, actions=False)  # the expert's are dropped too


def test_an_algorithm_that_learns_from_actions_refuses_the_file(action_free):
    with pytest.raises(envs.CleanILError, match="holds no 'actions', and this algorithm learns from the expert's"):
        envs.load_demos("Pendulum-v1", None, action_free["Pendulum"])


def test_a_file_without_actions_is_still_validated(tmp_path, action_free):
    spec = envs.env_spec("Pendulum-v1")
    with np.load(action_free["Pendulum"]) as f:
        data = {k: f[k] for k in f.files}
    bad = dict(data, next_obs=data["next_obs"][:, :2])
    with pytest.raises(envs.CleanILError, match="has 'next_obs' of shape"):
        envs.validate_demos(bad, spec, "x.npz")
    obs = data["obs"].copy()
    obs[5, 1] = np.nan
    with pytest.raises(envs.CleanILError, match="NaN or infinite values in 'obs'"):
        envs.validate_demos(dict(data, obs=obs), spec, "x.npz")
    with pytest.raises(envs.CleanILError, match="lacks the array"):
        envs.validate_demos({k: v for k, v in data.items() if k != "next_obs"}, spec, "x.npz")


@pytest.mark.parametrize(
    "script,flags",
    [
        ("bc", ()),
        ("gail", ()),
        ("airl", ("--state-only",)),
        ("iqlearn", ()),
        ("sqil", ()),
        ("density", ("--density-on", "sa")),
    ],
)
def test_algorithms_needing_actions_say_so_in_one_line(tmp_path, action_free, script, flags):
    res = run_cli(f"cleanil/{script}.py", "--env", "Pendulum", "--demos", action_free["Pendulum"], *flags,
                  "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds no 'actions'" in lines[0] and "gail.py --observation-only" in lines[0]
    assert not any(tmp_path.iterdir())  # refused before a run directory is made


SMOKE = {
    "gaifo_sac": ("gail", "Pendulum", ["--observation-only", "--total-steps", "300", "--learning-starts", "100",
                                    "--log-every", "100"]),
    "gaifo_ppo": ("gail", "CartPole", ["--observation-only", "--total-steps", "256", "--num-envs", "4",
                                       "--num-steps", "32", "--update-epochs", "1"]),
    "bco": ("bco", "Pendulum", ["--total-steps", "300", "--pre-steps", "200", "--alpha", "0.5",
                                "--inverse-updates", "10", "--policy-updates", "10"]),
    "density_ss": ("density", "Pendulum", ["--density-on", "ss", "--total-steps", "300", "--learning-starts", "100",
                                    "--log-every", "100"]),
    "density_s_ppo": ("density", "CartPole", ["--density-on", "s", "--total-steps", "256", "--num-envs", "4",
                                              "--num-steps", "32", "--update-epochs", "1"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SMOKE))
def test_observation_only_algorithms_run_on_the_file(tmp_path, action_free, case):
    script, env, flags = SMOKE[case]
    res = run_cli(f"cleanil/{script}.py", "--env", env, "--demos", action_free[env], *flags, "--eval-every", "100",
                  "--eval-episodes", "1", "--batch-size", "32", "--hidden", "32", "32",
                  "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    rows = read_metrics(run)
    assert any(k.startswith(("losses/", "inverse/")) for r in rows for k in r)  # an update step ran
    assert "eval/normalized_return" in rows[-1] and (run / "model.pt").exists()


def test_gaifo_refuses_expert_actions_in_the_sac_batch(tmp_path):
    res = run_cli("cleanil/gail.py", "--env", "Pendulum", "--observation-only", "--expert-ratio", "0.5",
                  "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "--observation-only has none" in res.stderr


def test_gaifo_learns_pendulum_from_states_alone(tmp_path, action_free):
    """~60 s: SAC generator, 3,000 env steps, 3 action-free demos. The discriminator ranks the expert's
    transitions above random ones."""
    run = run_script(tmp_path, "cleanil/gail.py", "--env", "Pendulum", "--observation-only", "--demos",
                     action_free["Pendulum"], "--total-steps", "3000", "--eval-every", "3000",
                     "--eval-episodes", "2", "--compile", "False")  # fmt: skip
    beats_random(run, "Pendulum-v1", margin=0.8)
    blob = torch.load(run / "discriminator.pt", weights_only=True)
    assert blob["observation_only"]
    spec = envs.env_spec("Pendulum-v1")
    disc = gail.Discriminator(2 * (spec.obs_dim + 1), tuple(blob["hidden"]), observation_only=True)
    disc.load_state_dict(blob["state_dict"])

    def logits(data: dict) -> np.ndarray:
        no_actions = np.zeros((len(data["obs"]), spec.act_dim), np.float32)  # GAIfO reads none
        x = gail.with_absorbing(data["obs"], no_actions, data["next_obs"], data["terminated"], blob["absorbing"])
        with torch.no_grad():
            return disc(gail.disc_input({k: torch.as_tensor(v) for k, v in x.items()}, True)).numpy()

    expert = logits(envs.load_demos("Pendulum-v1", 5, seed=7, actions=False))
    ranks_above(expert, logits(random_transitions("Pendulum-v1")))


def test_gaifo_reads_its_own_per_env_settings(monkeypatch):
    """configs/gaifo/ with --observation-only: GAIL's Hopper settings mix expert actions into SAC's batches,
    GAIfO's cannot."""
    from cleanil import runs

    monkeypatch.setattr("sys.argv", ["gail.py", "--env", "Hopper"])
    assert runs.parse_args(gail.Args, gail.config_dir).expert_ratio == 0.5
    monkeypatch.setattr("sys.argv", ["gail.py", "--env", "Hopper", "--observation-only"])
    parsed = runs.parse_args(gail.Args, gail.config_dir)
    assert parsed.observation_only and parsed.expert_ratio == 0.0 and parsed.critic_layernorm
