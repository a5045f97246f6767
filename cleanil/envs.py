"""Environments and what runs in them: env ids and specs, shipped experts, demonstrations, evaluation.

- ``resolve_env_id`` (aliases such as ``HalfCheetah``, ``module:EnvName-v0`` ids, ``--env-kwargs``), ``make_env``
  (Dict and other non-flat observations flattened), ``env_spec`` (the spaces a script needs), ``make_vec_env``
  (SAME_STEP autoreset) and ``true_next_obs`` (the final observation of an ended episode).
- Experts: shipped under ``cleanil/experts/``, or a user's own under ``$CLEANIL_CACHE/experts`` for envs the
  package does not ship (``expert_dirs``); ``load_expert``, their metadata and ``normalized_score``.
- Policies a script saves and loads (``save_policy``, ``load_policy``) and ``numpy_policy``.
- ``rollout`` and ``evaluate`` (raw and normalized return, on reset seeds apart from the demonstrations'), and
  ``render_episode``/``record_video`` (``--capture-video``).
- Demonstrations: ``load_demos`` (a user's ``.npz`` file, or the expert's, generated once and cached under
  ``$CLEANIL_CACHE``), ``load_demos_with_heldout``, ``validate_demos`` and ``save_demo_file``; a file may lack
  ``actions`` for the algorithms that learn from observations alone (``OBSERVATION_ONLY``).
- ``CleanILError`` (a problem with the user's input, reported as one line) and ``atomic_torch_save``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from cleanil import nets

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERT_DIR = Path(__file__).resolve().parent / "experts"
ENV_ALIASES = {
    "CartPole": "CartPole-v1",
    "Acrobot": "Acrobot-v1",
    "MountainCar": "MountainCar-v0",
    "Pendulum": "Pendulum-v1",
    "HalfCheetah": "HalfCheetah-v5",
    "Hopper": "Hopper-v5",
    "Walker2d": "Walker2d-v5",
    "Ant": "Ant-v5",
    "Swimmer": "Swimmer-v5",
    "Humanoid": "Humanoid-v5",
}
# Disjoint reset-seed ranges, so that learners are never evaluated on the demonstrations' seeds.
DEMO_SEED_BASE, EVAL_SEED_BASE, EXPERT_EVAL_SEED_BASE = 1_000_000, 2_000_000, 3_000_000
DEFAULT_NUM_DEMOS = 10  # episodes imitated when --num-demos is not given and no demo file is
DEMO_KEYS = ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")
# the algorithms (and settings) that learn from demonstrations without actions
OBSERVATION_ONLY = ("gail.py --observation-only", "bco.py", "density.py --density-on s or ss")
ROLLOUT_CHUNK = 10  # episodes run side by side; fixed so episode k is identical whatever the count


class CleanILError(Exception):
    """A problem with the user's input or files, reported as one sentence without a traceback."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cache_dir() -> Path:
    """Where generated demos and a user's own experts live: ``$CLEANIL_CACHE``, default ``~/.cache/cleanil``."""
    return Path(os.environ.get("CLEANIL_CACHE", Path.home() / ".cache" / "cleanil"))


# ----------------------------------------------------------------------------- environments
ENV_KWARGS: dict[str, dict] = {}  # keyword arguments of every gym.make of an env id, from --env-kwargs
FLATTEN_NOTED: set[str] = set()  # env ids whose flattened observations were announced on stdout
KWARGS_NOTED: set[tuple[str, str]] = set()  # (env id, kwargs) whose difference from the expert's was announced


def resolve_env_id(name: str, env_kwargs: str | dict | None = None) -> str:
    """Map an alias (``HalfCheetah``), a registered gymnasium id, or ``module:EnvName-v0`` (the module is
    imported first, so that it registers its envs) to a registered id. ``env_kwargs`` (a JSON object, as
    ``--env-kwargs`` gives it, or a dict) are passed to every ``make_env``/``make_vec_env`` of that id."""
    if ":" in name:
        module, name = name.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise CleanILError(f"--env {module}:{name}: module '{module}' cannot be imported ({e})") from None
    env_id = ENV_ALIASES.get(name, name)
    if env_id not in gym.registry:
        raise CleanILError(
            f"unknown environment '{name}': use an alias ({', '.join(ENV_ALIASES)}), a registered gymnasium id "
            "such as 'HalfCheetah-v5', or 'module:EnvName-v0' for an env that a module registers on import"
        )
    if isinstance(env_kwargs, str):
        try:
            env_kwargs = json.loads(env_kwargs)
        except json.JSONDecodeError as e:
            raise CleanILError(f"--env-kwargs is not valid JSON: {e}") from None
    if not isinstance(env_kwargs or {}, dict):
        raise CleanILError(f"--env-kwargs must be a JSON object such as '{{\"key\": 1}}', got {env_kwargs!r}")
    ENV_KWARGS[env_id] = dict(env_kwargs or {})
    return env_id


def needs_flattening(space: gym.Space) -> bool:
    """Dict, Tuple and multi-dimensional Box observations are flattened into one vector."""
    return isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)) or (
        isinstance(space, gym.spaces.Box) and len(space.shape) != 1
    )


def make_env(env_id: str, **extra: Any) -> gym.Env:
    """``gym.make`` with the id's ``--env-kwargs`` (and ``extra``, e.g. ``render_mode``); observations that are
    not a flat vector go through gymnasium's ``FlattenObservation``."""
    kwargs = ENV_KWARGS.get(env_id, {})
    try:
        env = gym.make(env_id, **kwargs, **extra)
    except gym.error.DependencyNotInstalled as e:  # e.g. Box2D envs without gymnasium[box2d]
        raise CleanILError(
            f"{env_id} needs a package that is not installed: {str(e).strip().splitlines()[0]}"
        ) from None
    except TypeError as e:
        if not kwargs:
            raise
        why = str(e).split(" was raised from the environment creator")[0]  # gymnasium repeats the kwargs after it
        raise CleanILError(f"--env-kwargs do not fit {env_id}: {why} (--env-kwargs '{json.dumps(kwargs)}')") from None
    return gym.wrappers.FlattenObservation(env) if needs_flattening(env.observation_space) else env


@dataclasses.dataclass
class EnvSpec:
    """What the scripts need to know about an env's spaces."""

    env_id: str
    obs_dim: int
    discrete: bool
    act_dim: int  # number of actions if discrete, action vector size otherwise
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    obs_discrete: bool = False  # tabular envs: observations are state indices in [0, obs_dim)


def env_spec(env_id: str) -> EnvSpec:
    env = make_env(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    original = env.env.observation_space if isinstance(env, gym.wrappers.FlattenObservation) else None
    env.close()
    if original is not None and env_id not in FLATTEN_NOTED:
        FLATTEN_NOTED.add(env_id)
        print(
            f"note: {env_id}'s observations ({type(original).__name__} space) are flattened into vectors of "
            f"{obs_space.shape[0]} numbers by gymnasium's FlattenObservation; demo files hold them flattened"
        )
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise CleanILError(f"{env_id} has observation space {obs_space}: cleanil needs a flat Box")
    if isinstance(act_space, gym.spaces.Discrete):
        return EnvSpec(env_id, obs_space.shape[0], True, int(act_space.n))
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return EnvSpec(env_id, obs_space.shape[0], False, act_space.shape[0], act_space.low, act_space.high)
    raise CleanILError(f"{env_id} has action space {act_space}: cleanil needs Discrete or a flat Box")


def make_vec_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    """Synchronous vector env of ``make_env`` copies in SAME_STEP autoreset mode: when a sub-env ends, ``step``
    already returns the first observation of its next episode, and the true last observation of the
    finished episode is in ``info["final_obs"][i]`` (mask ``info["_final_obs"]``)."""
    return gym.vector.SyncVectorEnv([functools.partial(make_env, env_id)] * num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)  # fmt: skip


def true_next_obs(next_obs: np.ndarray, info: dict) -> np.ndarray:
    """The observation each sub-env actually reached (the final one for envs that just ended)."""
    if "_final_obs" not in info or not info["_final_obs"].any():
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(info["_final_obs"]):
        real[i] = info["final_obs"][i]
    return real


# ----------------------------------------------------------------------------- policies
def save_policy(path: str | Path, actor: nn.Module, spec: EnvSpec, hidden: tuple[int, ...], **extra: Any) -> None:
    """Save an actor built by ``make_actor`` so that ``load_policy`` can rebuild it."""
    state = {k: v.detach().cpu() for k, v in actor.state_dict().items()}
    atomic_torch_save({"env_id": spec.env_id, "hidden": list(hidden), "state_dict": state, **extra}, path)


def make_actor(spec: EnvSpec, hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """``nets.make_actor`` for this env's spaces."""
    return nets.make_actor(spec.obs_dim, spec.act_dim, spec.discrete, spec.action_low, spec.action_high, hidden)


def load_policy(path: str | Path, spec: EnvSpec) -> nn.Module:
    """Rebuild an actor saved by ``save_policy``, checking that it fits the env. The global RNGs are left as
    they were, so a run draws the same numbers whether or where it loads a policy."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        with torch.random.fork_rng(devices=[]):  # the throwaway initialization of the weights loaded below
            actor = make_actor(spec, tuple(blob["hidden"]))
        actor.load_state_dict(blob["state_dict"])
    except FileNotFoundError:
        raise CleanILError(f"policy file {path} does not exist") from None
    except (RuntimeError, KeyError, TypeError, EOFError, OSError) as e:
        raise CleanILError(f"policy file {path} does not fit {spec.env_id}: {str(e).splitlines()[0]}") from None
    return actor.eval()


def numpy_policy(actor: nn.Module, device: torch.device, deterministic: bool = True) -> Callable:
    """Wrap an actor as a batched numpy function obs -> action."""

    @torch.inference_mode()
    def policy(obs: np.ndarray) -> np.ndarray:
        return actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device), deterministic).cpu().numpy()

    return policy


# ----------------------------------------------------------------------------- experts
def expert_dirs() -> tuple[Path, Path]:
    """Where experts are looked up, in order: the package's shipped ones, then the user's own (written there by
    scripts/train_expert.py); a shipped expert wins, so that scores stay comparable with the benchmark tables."""
    return EXPERT_DIR, cache_dir() / "experts"


def expert_paths(env_id: str) -> tuple[Path, Path]:
    """The expert's weights and metadata: the first directory of ``expert_dirs`` that has them (else the package's)."""
    found = [d for d in expert_dirs() if (d / f"{env_id}.json").exists()]
    folder = found[0] if found else EXPERT_DIR
    return folder / f"{env_id}.pt", folder / f"{env_id}.json"


EXPERT_META_KEYS = {"env_id": str, "algo": str, "return_mean": float, "return_std": float,
                    "random_return_mean": float, "eval_episodes": int, "total_steps": int,
                    "command": str, "versions": dict}  # fmt: skip


def load_expert_metadata(env_id: str) -> dict:
    path = expert_paths(env_id)[1]
    if not path.exists():
        known = sorted({p.stem for d in expert_dirs() for p in d.glob("*.json")})
        raise CleanILError(f"no expert for {env_id} (experts: {', '.join(known) or 'none'}); "
                           f"train one with scripts/train_expert.py --env {env_id} or pass --demos")  # fmt: skip
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CleanILError(f"expert metadata {path} is not valid JSON: {e}") from None
    for key, typ in EXPERT_META_KEYS.items():
        if not isinstance(meta.get(key), (int, float) if typ is float else typ):
            raise CleanILError(f"expert metadata {path} lacks a valid '{key}' field")
    if meta["env_id"] != env_id:
        raise CleanILError(f"expert metadata {path} is for {meta['env_id']}, not {env_id}")
    trained_in, now = meta.get("env_kwargs") or {}, ENV_KWARGS.get(env_id, {})
    if trained_in != now and (env_id, json.dumps(now)) not in KWARGS_NOTED:
        KWARGS_NOTED.add((env_id, json.dumps(now)))
        print(f"note: the expert for {env_id} was trained with env kwargs {json.dumps(trained_in)}, this run uses "
              f"{json.dumps(now)}: its demos are rolled out in this run's env, and normalized scores use its "
              "return from the env it was trained in")  # fmt: skip
    return meta


def load_expert(env_id: str) -> nn.Module:
    load_expert_metadata(env_id)
    return load_policy(expert_paths(env_id)[0], env_spec(env_id))


def normalized_score(ret: float, env_id: str) -> float | None:
    """(return - random) / (expert - random), or None when no expert ships for this env."""
    if not expert_paths(env_id)[1].exists():
        return None
    meta = load_expert_metadata(env_id)
    return (ret - meta["random_return_mean"]) / (meta["return_mean"] - meta["random_return_mean"])


# ----------------------------------------------------------------------------- rollouts
def rollout(policy: Callable, env_id: str, episodes: int, seed: int, record: bool = False) -> dict:
    """Run ``episodes`` episodes (episode k reset with seed ``seed + k``), ROLLOUT_CHUNK at a time.

    Returns per-episode returns and lengths and, if ``record``, the transitions in the demo format.
    """
    returns, lengths, steps = [], [], {k: [] for k in DEMO_KEYS}
    for start in range(0, episodes, ROLLOUT_CHUNK):
        vec_env = make_vec_env(env_id, ROLLOUT_CHUNK)
        obs, _ = vec_env.reset(seed=[seed + start + i for i in range(ROLLOUT_CHUNK)])
        alive = np.arange(ROLLOUT_CHUNK) < episodes - start
        ret, length = np.zeros(ROLLOUT_CHUNK), np.zeros(ROLLOUT_CHUNK, dtype=np.int64)
        per_env = [{k: [] for k in DEMO_KEYS} for _ in range(ROLLOUT_CHUNK)]
        while alive.any():
            action = policy(obs)
            next_obs, reward, term, trunc, info = vec_env.step(action)
            real_next = true_next_obs(next_obs, info)
            for i in np.flatnonzero(alive) if record else ():
                row = (obs[i], action[i], reward[i], real_next[i], term[i], trunc[i])
                for k, v in zip(DEMO_KEYS, row, strict=True):
                    per_env[i][k].append(v)
            ret += reward * alive
            length += alive
            alive &= ~(term | trunc)
            obs = next_obs
        vec_env.close()
        n = min(ROLLOUT_CHUNK, episodes - start)
        returns += ret[:n].tolist()
        lengths += length[:n].tolist()
        for ep in per_env[:n] if record else ():
            for k in DEMO_KEYS:
                steps[k] += ep[k]
    out = {"returns": np.array(returns), "lengths": np.array(lengths)}
    if record:
        out["transitions"] = {k: np.array(v) for k, v in steps.items()}
    return out


def evaluate(policy: Callable, env_id: str, episodes: int, seed: int) -> dict:
    """Evaluate on reset seeds disjoint from the demonstrations'; raw and normalized return."""
    result = rollout(policy, env_id, episodes, EVAL_SEED_BASE + 10_000 * seed)
    mean = float(result["returns"].mean())
    norm = normalized_score(mean, env_id)
    out = {"eval/return": mean, "eval/return_std": float(result["returns"].std()),
           "eval/length": float(result["lengths"].mean())}  # fmt: skip
    return out if norm is None else {**out, "eval/normalized_return": norm}


def check_video_support() -> None:
    """Raise CleanILError before a run starts if mp4 files cannot be written (``--capture-video``)."""
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise CleanILError("--capture-video needs imageio and imageio-ffmpeg (and pygame for classic control): "
                           "pip install -e '.[video]'") from None  # fmt: skip


def make_render_env(env_id: str, size: int | None = None) -> gym.Env:
    """The env drawing ``rgb_array`` frames (MuJoCo: ``size`` pixels square, offscreen). A MuJoCo model whose
    default view does not follow the body (HalfCheetah, Ant, Swimmer) is filmed by its ``track`` camera, so
    that the agent stays in the picture."""
    mujoco = "mujoco" in str(gym.spec(env_id).entry_point)
    env = make_env(env_id, render_mode="rgb_array", **({"width": size, "height": size} if mujoco and size else {}))
    renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    if renderer is not None and "trackbodyid" not in (renderer.default_cam_config or {}):
        import mujoco as mj

        camera = mj.mj_name2id(env.unwrapped.model, mj.mjtObj.mjOBJ_CAMERA, "track")
        renderer.camera_id = camera if camera >= 0 else renderer.camera_id
    return env


def render_episode(policy: Callable, env_id: str, seed: int, max_frames: int = 1000, size: int | None = None) -> tuple:
    """One episode of ``policy`` (batched numpy obs -> action) rendered offscreen (MuJoCo through EGL on a
    headless machine, classic control through pygame): (frames [T, H, W, 3] uint8, return, frames per second).
    ``size``: MuJoCo's frame width and height (default 480)."""
    try:
        env = make_render_env(env_id, size)
        obs, _ = env.reset(seed=seed)
        frames, ret, done = [env.render()], 0.0, False
    except (gym.error.DependencyNotInstalled, ImportError) as e:
        raise CleanILError(f"{env_id} cannot render here: {str(e).strip().splitlines()[0]} "
                           "(pip install -e '.[video]')") from None  # fmt: skip
    while not done and len(frames) < max_frames:
        obs, reward, term, trunc, _ = env.step(policy(obs[None])[0])
        frames.append(env.render())
        ret, done = ret + float(reward), term or trunc
    fps = env.metadata.get("render_fps") or 30
    env.close()
    return np.stack(frames), ret, int(fps)


def sim_state(env: gym.Env) -> np.ndarray:
    """What it takes to draw this moment again: MuJoCo's qpos and qvel, or a classic-control env's ``state``."""
    u = env.unwrapped
    if hasattr(u, "set_state") and hasattr(u, "data"):
        return np.concatenate([u.data.qpos, u.data.qvel])
    if getattr(u, "state", None) is not None:
        return np.array(u.state, dtype=np.float64)
    raise CleanILError(f"{env.spec.id if env.spec else env} keeps no simulator state to render a clip from: "
                       "clips need a MuJoCo or a classic-control env")  # fmt: skip


def render_state(env: gym.Env, state: np.ndarray) -> np.ndarray:
    """Put a ``render_mode="rgb_array"`` env (reset once) in a state from ``sim_state`` and draw it."""
    u = env.unwrapped
    if hasattr(u, "set_state") and hasattr(u, "data"):
        u.set_state(state[: u.model.nq], state[u.model.nq :])
    else:
        u.state = np.array(state)
    return env.render()


def record_video(policy: Callable, env_id: str, path: str | Path, seed: int, max_frames: int = 1000) -> Path:
    """Write one deterministic evaluation episode (reset seed apart from the demonstrations') to ``path``,
    an H.264 mp4 that browsers play; returns the path."""
    import imageio.v2 as imageio

    frames, ret, fps = render_episode(policy, env_id, EVAL_SEED_BASE + 10_000 * seed, max_frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=2, quality=6) as writer:
        for frame in frames:
            writer.append_data(frame)
    print(f"video of one evaluation episode (return {ret:.1f}, {len(frames)} frames): {path}")
    return path


# ----------------------------------------------------------------------------- demonstrations
def validate_demos(data: dict, spec: EnvSpec, source: str) -> dict:
    """Check a demo dict against the env; return it with canonical dtypes or raise CleanILError. ``actions``
    may be absent (demonstrations of observations alone); every other array of DEMO_KEYS must be there."""
    keys = [k for k in DEMO_KEYS if k != "actions" or "actions" in data]
    missing = [k for k in DEMO_KEYS if k not in data and k != "actions"]
    if missing:
        raise CleanILError(f"demo file {source} lacks the array(s) {', '.join(missing)}")
    n = len(data["obs"])
    if n == 0 or any(len(data[k]) != n for k in keys):
        raise CleanILError(f"demo file {source} is empty or its arrays differ in length")
    for key in ("obs", "next_obs"):
        if spec.obs_discrete:
            obs = data[key]
            if obs.ndim != 1 or not np.issubdtype(obs.dtype, np.integer) or obs.min() < 0 or obs.max() >= spec.obs_dim:
                raise CleanILError(
                    f"demo file {source} must hold integer '{key}' in [0, {spec.obs_dim}) for {spec.env_id}"
                )
        elif data[key].shape[1:] != (spec.obs_dim,):
            raise CleanILError(f"demo file {source} has '{key}' of shape {data[key].shape[1:]} per step, "
                               f"but {spec.env_id} observations have shape ({spec.obs_dim},)")  # fmt: skip
    for key in ("obs", "rewards", "next_obs"):
        if not np.isfinite(data[key]).all():
            raise CleanILError(f"demo file {source} contains NaN or infinite values in '{key}'")
    if "actions" in data:
        check_demo_actions(data["actions"], spec, source)
    done = np.asarray(data["terminated"], bool) | np.asarray(data["truncated"], bool)
    if not done[-1]:
        raise CleanILError(f"demo file {source} ends in the middle of an episode")
    moved = (data["next_obs"][:-1] != data["obs"][1:]).reshape(n - 1, -1).any(-1)
    breaks = np.flatnonzero(~done[:-1] & moved)
    if len(breaks):
        raise CleanILError(f"demo file {source}: next_obs at step {breaks[0]} differs from the following obs, "
                           "but neither terminated nor truncated marks an episode end there")  # fmt: skip
    obs_dtype = np.int64 if spec.obs_discrete else np.float32
    out = {k: np.asarray(data[k], obs_dtype) for k in ("obs", "next_obs")} | {
        "rewards": data["rewards"].astype(np.float32)
    }
    if "actions" in data:
        out["actions"] = data["actions"].astype(np.int64 if spec.discrete else np.float32)
    out.update(terminated=np.asarray(data["terminated"], bool), truncated=np.asarray(data["truncated"], bool))
    return out


def check_demo_actions(act: np.ndarray, spec: EnvSpec, source: str) -> None:
    """The demo file's actions fit the env's action space: shape, type, finite values, bounds."""
    if spec.discrete:
        if act.ndim != 1 or not np.issubdtype(act.dtype, np.integer) or act.min() < 0 or act.max() >= spec.act_dim:
            raise CleanILError(f"demo file {source} must hold integer actions in [0, {spec.act_dim}) for {spec.env_id}")
    elif act.shape[1:] != (spec.act_dim,):
        raise CleanILError(f"demo file {source} has actions of shape {act.shape[1:]} per step, "
                           f"but {spec.env_id} actions have shape ({spec.act_dim},)")  # fmt: skip
    if not np.isfinite(act).all():
        raise CleanILError(f"demo file {source} contains NaN or infinite values in 'actions'")
    if not spec.discrete:  # continuous actions must lie in the env's box (what the env would clip them to)
        low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
        outside = np.argwhere((act < low - 1e-6 * np.abs(low)) | (act > high + 1e-6 * np.abs(high)))
        if len(outside):
            row, i = outside[0]
            bound = f"[{low[i]:.4g}, {high[i]:.4g}]"
            raise CleanILError(f"demo file {source} has 'actions' outside {spec.env_id}'s action bounds: "
                               f"actions[{row}, {i}] = {act[row, i]:.4g} is not in {bound}")  # fmt: skip


def episode_ends(data: dict) -> np.ndarray:
    """Index of the last transition of each episode."""
    return np.flatnonzero(data["terminated"] | data["truncated"])


def episodes(data: dict, start: int, stop: int) -> dict:
    """Episodes ``start`` (counted from 0) up to ``stop`` (exclusive) of a demo dict."""
    ends = episode_ends(data)
    lo = 0 if start == 0 else ends[start - 1] + 1
    return {k: v[lo : ends[stop - 1] + 1] for k, v in data.items()}


def load_demo_file(path: str | Path, spec: EnvSpec) -> dict:
    """Load and validate a user's ``.npz`` demo file (format: see README, 'Bring your own demos')."""
    if not Path(path).is_file():
        raise CleanILError(f"demo file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:  # numpy raises many types for a corrupt archive
        raise CleanILError(f"demo file {path} could not be read as .npz ({type(e).__name__}: {e})") from None
    return validate_demos(data, spec, str(path))


def save_demo_file(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
        np.savez_compressed(f, **data)
    os.replace(f.name, path)


def generate_demos(env_id: str, num: int, seed: int = 0) -> dict:
    """Roll out the shipped expert deterministically: episode k is reset with a fixed seed. Its actions are
    clipped to the env's bounds (an expert trained with other --env-kwargs may have other bounds)."""
    spec, act = env_spec(env_id), numpy_policy(load_expert(env_id), torch.device("cpu"))
    expert = act if spec.discrete else lambda obs: np.clip(act(obs), spec.action_low, spec.action_high)
    return rollout(expert, env_id, num, DEMO_SEED_BASE + 10_000 * seed, record=True)["transitions"]


def load_demos(env_id: str, num: int | None, path: str | None = None, seed: int = 0, actions: bool = True) -> dict:
    """The first ``num`` episodes of a user file (``path``) or of the expert's cached demos. ``num`` None
    means every episode of the file (said on stdout), or DEFAULT_NUM_DEMOS of the expert's. ``actions``:
    whether the algorithm learns from the expert's actions (a file without them is then refused); False
    drops them, so that an algorithm that learns from observations alone never sees them."""
    return load_demos_with_heldout(env_id, num, 0, path, seed, actions)[0]


def load_demos_with_heldout(env_id: str, num: int | None, heldout: int | None, path: str | None = None,
                            seed: int = 0, actions: bool = True) -> tuple[dict, dict]:  # fmt: skip
    """Training episodes and the ``heldout`` episodes after them (for scoring a recovered reward).

    From a file: ``num`` None trains on every episode the held-out ones leave; ``heldout`` None holds out
    up to 5 episodes beyond those trained on, and none when the file has no more.
    From the expert: ``num`` None is DEFAULT_NUM_DEMOS, ``heldout`` None is 5. ``actions``: as in load_demos.
    """
    for flag, value in (("--num-demos", num), ("--heldout-demos", heldout)):
        if value is not None and value < (1 if flag == "--num-demos" else 0):
            raise CleanILError(f"{flag} must be at least {1 if flag == '--num-demos' else 0}, got {value}")
    spec = env_spec(env_id)
    if path is None:
        num, heldout = num or DEFAULT_NUM_DEMOS, 5 if heldout is None else heldout
        data = expert_demos(env_id, spec, num + heldout, seed)
    else:
        data = load_demo_file(path, spec)
        if actions and "actions" not in data:
            raise CleanILError(f"demo file {path} holds no 'actions', and this algorithm learns from the expert's "
                               f"actions (from observations alone: {', '.join(OBSERVATION_ONLY)})")  # fmt: skip
    if not actions:
        data = {k: v for k, v in data.items() if k != "actions"}
    if path is None:
        return episodes(data, 0, num), (episodes(data, num, num + heldout) if heldout else {})
    return select_episodes(data, num, heldout, path)


def select_episodes(data: dict, num: int | None, heldout: int | None, path: str) -> tuple[dict, dict]:
    """Training and held-out episodes of a user's demo file, as ``load_demos_with_heldout`` describes."""
    total = len(episode_ends(data))
    if num is None:
        num = total - (heldout or 0)
        if num < 1:
            raise CleanILError(f"demo file {path} holds {total} episode(s): none is left to train on "
                               f"after --heldout-demos {heldout}")  # fmt: skip
        print(f"{path}: imitating {'all ' * (num == total)}{num} of its {total} episode(s) (--num-demos not given)")
    heldout = min(5, max(0, total - num)) if heldout is None else heldout
    if num + heldout > total:
        asked = " + ".join([f"--num-demos {num}"] + [f"--heldout-demos {heldout}"] * (heldout > 0))
        raise CleanILError(f"demo file {path} holds {total} episode(s), but {asked} = {num + heldout} were asked for")
    return episodes(data, 0, num), (episodes(data, num, num + heldout) if heldout else {})


def expert_demos(env_id: str, spec: EnvSpec, num: int, seed: int) -> dict:
    """``num`` episodes of the expert, rolled out once and cached (the cache key includes the expert's hash)."""
    load_expert_metadata(env_id)  # clear error if there is no expert
    digest = hashlib.sha256(expert_paths(env_id)[0].read_bytes()).hexdigest()[:10]
    if ENV_KWARGS.get(env_id):  # rolled out in the env as --env-kwargs configure it
        digest += "__kw" + hashlib.sha256(json.dumps(ENV_KWARGS[env_id], sort_keys=True).encode()).hexdigest()[:8]
    file = cache_dir() / "demos" / f"{env_id}__n{num}__seed{seed}__{digest}.npz"
    if not file.exists():  # leaves the global RNGs as they were: a run is the same with or without a cache
        np_state = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            save_demo_file(file, generate_demos(env_id, num, seed))
        np.random.set_state(np_state)
    return load_demo_file(file, spec)
