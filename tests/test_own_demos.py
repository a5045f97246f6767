"""A user's own demo file and own expert, through the real command lines: a file's episode count is the
default --num-demos, IQ-Learn's held-out scoring uses only episodes beyond those it trains on (and is
skipped when the file has none), and an expert trained by scripts/train_expert.py for an env the package
does not ship is written under $CLEANIL_CACHE/experts and then used for demos and normalized scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, only_run_dir, read_metrics, run_cli

from cleanil import envs, mce_irl


@pytest.fixture(scope="module")
def cartpole_file(tmp_path_factory) -> callable:
    """``episodes`` -> a .npz of that many CartPole expert episodes, as a user's own file would be."""
    folder = tmp_path_factory.mktemp("own_demos")

    def make(episodes: int) -> str:
        path = folder / f"cartpole{episodes}.npz"
        if not path.exists():
            envs.save_demo_file(path, envs.generate_demos("CartPole-v1", episodes, seed=3))
        return str(path)

    return make


def config(run) -> dict:
    return json.loads((run / "config.json").read_text())


def test_iqlearn_trains_on_every_episode_of_a_ten_episode_file_and_skips_heldout_scoring(tmp_path, cartpole_file):
    res = run_cli("cleanil/iqlearn.py", "--env", "CartPole", "--offline", "--demos", cartpole_file(10),
                  "--total-steps", "40", "--eval-every", "20", "--log-every", "20", "--eval-episodes", "1",
                  "--hidden", "16", "16", "--reward-episodes", "0", "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "imitating all 10 of its 10 episode(s)" in res.stdout
    assert "no held-out demos: the recovered reward is not scored" in res.stdout
    run = only_run_dir(tmp_path)
    assert (config(run)["num_demos"], config(run)["heldout_demos"]) == (10, 0)
    rows = read_metrics(run)
    assert any("losses/iq" in r for r in rows) and not any("reward/pearson_heldout" in r for r in rows)


def test_iqlearn_holds_out_the_episodes_beyond_those_it_trains_on(tmp_path):
    path = tmp_path / "pendulum.npz"
    envs.save_demo_file(path, envs.generate_demos("Pendulum-v1", 4, seed=3))
    flags = ("--env", "Pendulum", "--offline", "--demos", str(path), "--total-steps", "20", "--eval-every", "20",
             "--eval-episodes", "1", "--hidden", "16", "16", "--reward-episodes", "0")  # fmt: skip
    res = run_cli("cleanil/iqlearn.py", *flags, "--num-demos", "3", "--run-dir", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path / "a")
    assert (config(run)["num_demos"], config(run)["heldout_demos"]) == (3, 1)  # the one episode left over
    assert "reward/pearson_heldout" in read_metrics(run)[-1]
    # more than the file holds: one line naming every flag that asked for episodes, no run directory
    res = run_cli("cleanil/iqlearn.py", *flags, "--num-demos", "3", "--heldout-demos", "2", "--run-dir",
                  str(tmp_path / "b"))  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "holds 4 episode(s), but --num-demos 3 + --heldout-demos 2 = 5 were asked for" in res.stderr
    assert not (tmp_path / "b").exists()


TINY = {
    "cleanil/bc.py": ("--env", "CartPole", "--total-steps", "20", "--eval-every", "20", "--eval-episodes", "1"),
    "cleanil/dagger.py": (
        "--env",
        "CartPole",
        "--total-steps",
        "40",
        "--rounds",
        "2",
        "--updates-per-round",
        "5",
        "--eval-episodes",
        "1",
    ),  # fmt: skip
    "cleanil/gail.py": (
        "--env",
        "CartPole",
        "--total-steps",
        "64",
        "--num-envs",
        "2",
        "--num-steps",
        "32",
        "--eval-every",
        "64",
        "--eval-episodes",
        "1",
        "--hidden",
        "16",
        "16",
    ),  # fmt: skip
    "cleanil/airl.py": (
        "--env",
        "CartPole",
        "--total-steps",
        "64",
        "--num-envs",
        "2",
        "--num-steps",
        "32",
        "--eval-every",
        "64",
        "--eval-episodes",
        "1",
        "--hidden",
        "16",
        "16",
    ),  # fmt: skip
    "cleanil/iqlearn.py": (
        "--env",
        "CartPole",
        "--offline",
        "--total-steps",
        "20",
        "--eval-every",
        "20",
        "--eval-episodes",
        "1",
        "--hidden",
        "16",
        "16",
        "--reward-episodes",
        "0",
    ),  # fmt: skip
}


@pytest.mark.parametrize("script", sorted(TINY))
def test_a_three_episode_file_needs_no_num_demos(tmp_path, cartpole_file, script):
    res = run_cli(script, *TINY[script], "--demos", cartpole_file(3), "--run-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "imitating all 3 of its 3 episode(s) (--num-demos not given)" in res.stdout
    assert config(only_run_dir(tmp_path))["num_demos"] == 3
    # an explicit count beyond the file is still one clear error
    res = run_cli(script, *TINY[script], "--demos", cartpole_file(3), "--num-demos", "5", "--run-dir",
                  str(tmp_path / "more"))  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "holds 3 episode(s), but --num-demos 5 = 5 were asked for" in res.stderr


def test_mce_irl_tabular_file_needs_no_num_demos(tmp_path):
    mdp = mce_irl.mdp_from_env(envs.resolve_env_id("CliffWalking-v1"), None)
    dyn = mce_irl.Dynamics.from_dense(mdp.transitions)
    demos = mce_irl.sample_trajectories(mce_irl.value_iteration(mdp.reward * 100, dyn, 1.0, 100), mdp, 3, seed=0)
    np.savez(tmp_path / "cliff.npz", **demos)
    res = run_cli("cleanil/mce_irl.py", "--env", "CliffWalking-v1", "--demos", str(tmp_path / "cliff.npz"),
                  "--total-steps", "10", "--eval-every", "10", "--run-dir", str(tmp_path / "runs"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "matching 3 demonstrations" in res.stdout
    assert config(only_run_dir(tmp_path / "runs"))["num_demos"] == 3


def test_user_trained_expert_lives_outside_the_package_and_is_used(tmp_path, monkeypatch):
    """InvertedPendulum-v5: no expert ships for it."""
    monkeypatch.setenv("CLEANIL_CACHE", str(tmp_path / "cache"))
    env_id = "InvertedPendulum-v5"
    assert not (envs.EXPERT_DIR / f"{env_id}.json").exists()
    res = run_cli("scripts/train_expert.py", "--env", env_id, "--total-steps", "300", "--learning-starts", "100",
                  "--eval-every", "150", "--eval-episodes", "2", "--final-eval-episodes", "3", "--hidden", "32", "32",
                  "--run-dir", str(tmp_path / "runs"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "cache" / "experts" / f"{env_id}.json").read_text())
    assert not (envs.EXPERT_DIR / f"{env_id}.json").exists()  # nothing written into the package
    assert not any(p.name.startswith(env_id) for p in (REPO / "cleanil" / "experts").iterdir())

    # the scripts find it: demos are rolled out from it, scores are normalized by its metadata
    res = run_cli("cleanil/bc.py", "--env", env_id, "--num-demos", "2", "--total-steps", "20", "--eval-every", "20",
                  "--eval-episodes", "2", "--run-dir", str(tmp_path / "bc"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    final = read_metrics(only_run_dir(tmp_path / "bc"))[-1]
    expected = (final["eval/return"] - meta["random_return_mean"]) / (meta["return_mean"] - meta["random_return_mean"])
    assert final["eval/normalized_return"] == pytest.approx(expected)
    assert any(p.name.startswith(env_id) for p in (tmp_path / "cache" / "demos").iterdir())
