"""Any env a user brings, through the real command lines: a ``module:EnvName-v0`` id registered on import
(tests/point_goal.py, with Dict observations), ``--env-kwargs``, and the README's whole path: train an expert
with scripts/train_expert.py, collect demos with scripts/collect_demos.py, run each algorithm on them.
Also ``--capture-video``, which writes an mp4 that reads back frame by frame."""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import REPO, only_run_dir, read_metrics, run_cli

from cleanil import envs

ENV = "point_goal:PointGoal-v0"  # tests/point_goal.py, importable with tests/ on PYTHONPATH as a user's module is


@pytest.fixture(scope="module", autouse=True)
def user_module_importable():
    """tests/ on PYTHONPATH for the scripts' processes, as a user's own package would be installed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")])))
        yield


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict:
    """The README's path on the user's env: an expert trained by train_expert.py, then 10 demos collected."""
    folder = tmp_path_factory.mktemp("user_env")
    res = run_cli("scripts/train_expert.py", "--env", ENV, "--algo", "ppo", "--total-steps", "60000", "--lr", "2e-3",
                  "--eval-every", "20000", "--final-eval-episodes", "20", "--hidden", "64", "64",
                  "--run-dir", str(folder / "runs"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    expert = json.loads((Path(os.environ["CLEANIL_CACHE"]) / "experts" / "PointGoal-v0.json").read_text())
    demos = folder / "demos.npz"
    collected = run_cli("scripts/collect_demos.py", "--env", ENV, "--num-demos", "10", "--out", str(demos))
    assert collected.returncode == 0, collected.stderr
    return {"train_stdout": res.stdout, "expert": expert, "demos": str(demos)}


def test_dict_observations_are_flattened_with_a_note(capsys):
    env_id = envs.resolve_env_id(ENV)
    spec = envs.env_spec(env_id)
    assert (env_id, spec.obs_dim, spec.discrete, spec.act_dim) == ("PointGoal-v0", 6, False, 2)
    assert "flattened into vectors of 6 numbers" in capsys.readouterr().out
    vec = envs.make_vec_env(env_id, 3)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (3, 6)
    raw = envs.gym.make(env_id).unwrapped
    raw.reset(seed=0)
    # gymnasium flattens a Dict in its keys' sorted order: goal, position, velocity
    assert np.allclose(obs[0], np.concatenate([raw.goal, raw.pos, raw.vel]))


def test_env_kwargs_reach_every_env_made():
    env_id = envs.resolve_env_id(ENV, '{"max_force": 0.5}')
    assert np.allclose(envs.env_spec(env_id).action_high, 0.5)
    assert np.allclose(envs.make_vec_env(env_id, 2).single_action_space.high, 0.5)
    envs.resolve_env_id(ENV)  # back to the defaults for the rest of the session
    assert np.allclose(envs.env_spec(env_id).action_high, 1.0)


@pytest.mark.parametrize(
    "env, kwargs, message",
    [
        (ENV, '{"nope": 1}', "error: --env-kwargs do not fit PointGoal-v0: PointGoalEnv.__init__() got an unexpected"),
        (ENV, "{max_force: 1}", "error: --env-kwargs is not valid JSON"),
        ("CartPole", "[1]", "error: --env-kwargs must be a JSON object"),
        (
            "no_such_module:Env-v0",
            "{}",
            "error: --env no_such_module:Env-v0: module 'no_such_module' cannot be imported",
        ),
        ("point_goal:Nope-v0", "{}", "error: unknown environment 'Nope-v0'"),
    ],
)
def test_bad_env_or_kwargs_is_one_line(tmp_path, env, kwargs, message):
    res = run_cli("cleanil/bc.py", "--env", env, "--env-kwargs", kwargs, "--run-dir", str(tmp_path),
                  "--total-steps", "10")  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(message), res.stderr
    assert "Traceback" not in res.stderr


def test_expert_trained_on_the_users_env_and_bc_imitates_it(user_env, tmp_path):
    assert "flattened into vectors of 6 numbers" in user_env["train_stdout"]
    expert = user_env["expert"]
    assert expert["env_kwargs"] == {}
    assert expert["return_mean"] > expert["random_return_mean"] + 30  # it learned to reach the goal
    res = run_cli("cleanil/bc.py", "--env", ENV, "--demos", user_env["demos"], "--total-steps", "2000",
                  "--eval-every", "1000", "--capture-video", "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    final = read_metrics(run)[-1]
    assert final["eval/normalized_return"] >= 0.8, final  # flattened the same way in demos and in evaluation
    frames = iio.imread(run / "videos" / "final.mp4")
    assert frames.shape == (51, 64, 64, 3)  # the reset frame and 50 steps, drawn by the env's own render()


SMOKE = {  # each algorithm on the user's env and demos, a few updates each
    "dagger": ["--rounds", "2", "--total-steps", "100", "--updates-per-round", "20"],
    "drlhp": ["--total-steps", "300", "--learning-starts", "100", "--query-every", "100", "--num-queries", "10",
              "--fragment-length", "10", "--reward-updates", "5", "--batch-size", "32"],
    "bco": ["--demos", "DEMOS", "--total-steps", "300", "--pre-steps", "200", "--alpha", "0.5", "--inverse-updates",
            "10", "--policy-updates", "10", "--batch-size", "32"],
} | {
    algo: ["--demos", "DEMOS", "--total-steps", "300", "--learning-starts", "100", "--batch-size", "32"]
    for algo in ("gail", "airl", "iqlearn", "sqil", "density")
}  # fmt: skip


@pytest.mark.parametrize("algo", sorted(SMOKE))
def test_each_algorithm_runs_on_the_users_env(user_env, tmp_path, algo):
    flags = [user_env["demos"] if flag == "DEMOS" else flag for flag in SMOKE[algo]]
    res = run_cli(f"cleanil/{algo}.py", "--env", ENV, *flags, "--eval-every", "100",
                  "--eval-episodes", "2", "--hidden", "32", "32", "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    assert (run / "model.pt").exists()
    assert "eval/normalized_return" in read_metrics(run)[-1]  # scored against the user's expert


def test_env_kwargs_differing_from_the_experts_are_noted_and_key_the_demo_cache(user_env, tmp_path):
    res = run_cli("cleanil/bc.py", "--env", ENV, "--env-kwargs", '{"max_force": 0.5}', "--num-demos", "2",
                  "--total-steps", "20", "--eval-every", "20", "--eval-episodes", "2",
                  "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert 'was trained with env kwargs {}, this run uses {"max_force": 0.5}' in res.stdout
    assert json.loads((only_run_dir(tmp_path) / "config.json").read_text())["env_kwargs"] == '{"max_force": 0.5}'
    cached = [p.name for p in (Path(os.environ["CLEANIL_CACHE"]) / "demos").glob("PointGoal-v0__n*")]
    assert any("__kw" in name for name in cached), cached
    demos = np.load(next((Path(os.environ["CLEANIL_CACHE"]) / "demos").glob("PointGoal-v0__n*__kw*")))
    assert np.abs(demos["actions"]).max() <= 0.5  # rolled out in the env the kwargs configure


def test_capture_video_writes_a_playable_mp4(tmp_path):
    res = run_cli("cleanil/bc.py", "--env", "CartPole", "--num-demos", "2", "--total-steps", "20", "--eval-every",
                  "20", "--eval-episodes", "2", "--capture-video", "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    frames = iio.imread(only_run_dir(tmp_path) / "videos" / "final.mp4")
    steps = int(res.stdout.split(" frames)")[0].rsplit(", ", 1)[1])
    assert frames.shape == (steps, 400, 600, 3) and frames.max() > frames.min()


def test_benchmark_runs_on_the_users_env(user_env, tmp_path):
    res = run_cli("scripts/benchmark.py", "--algos", "bc", "--envs", ENV, "--seeds", "1", "--out-dir",
                  str(tmp_path / "records"), "--run-root", str(tmp_path / "runs"),
                  "--extra=--total-steps 40 --eval-every 20 --eval-episodes 2 --num-demos 2")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((tmp_path / "records" / "bc" / "PointGoal-v0__seed1.json").read_text())
    assert f"--env {ENV}" in record["command"] and record["final_normalized_return"] is not None
