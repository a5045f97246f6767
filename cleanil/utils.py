"""Thin plumbing shared by every cleanil script.

Environments and aliases, seeding, shipped experts, demonstrations (generate, cache, load,
validate), torchrl replay buffers, network builders, evaluation with normalized scores, and
run outputs (config.json, metrics.jsonl, atomic model.pt, optional wandb). No algorithm math
(losses, updates, training loops) lives here: each algorithm file owns its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

if TYPE_CHECKING:
    from tensordict import TensorDict
    from torchrl.data import ReplayBuffer

logging.getLogger("torchrl").setLevel(logging.WARNING)  # silence per-storage INFO lines
# torch.distributions' argument checks cost a host sync per distribution built, and turn a NaN into a
# traceback deep in torch; Run's guard reports non-finite losses and parameters instead
torch.distributions.Distribution.set_default_validate_args(False)


def _mujoco_warning(message: str) -> None:
    """Forward MuJoCo's warnings, except the one every gymnasium MuJoCo v5 model triggers at load
    under MuJoCo 4 ('settotalmass' is deprecated): it says nothing about the user's run."""
    if "settotalmass" not in message:
        print(f"MuJoCo warning: {message}", file=sys.stderr)


mujoco.set_mju_user_warning(_mujoco_warning)

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
}
# Disjoint reset-seed ranges, so that learners are never evaluated on the demonstrations' seeds.
DEMO_SEED_BASE, EVAL_SEED_BASE, EXPERT_EVAL_SEED_BASE = 1_000_000, 2_000_000, 3_000_000
DEMO_KEYS = ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")
ROLLOUT_CHUNK = 10  # episodes run side by side; fixed so episode k is identical whatever the count


class CleanILError(Exception):
    """A problem with the user's input or files, reported as one sentence without a traceback."""


# ----------------------------------------------------------------------------- environments
def resolve_env_id(name: str) -> str:
    """Map an alias (``HalfCheetah``) or a full gymnasium id to a registered gymnasium id."""
    env_id = ENV_ALIASES.get(name, name)
    if env_id not in gym.registry:
        raise CleanILError(
            f"unknown environment '{name}': use an alias ({', '.join(ENV_ALIASES)}) "
            "or a registered gymnasium id such as 'HalfCheetah-v5'"
        )
    return env_id


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
    env = gym.make(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise CleanILError(f"{env_id} has observation space {obs_space}: cleanil needs a flat Box")
    if isinstance(act_space, gym.spaces.Discrete):
        return EnvSpec(env_id, obs_space.shape[0], True, int(act_space.n))
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return EnvSpec(env_id, obs_space.shape[0], False, act_space.shape[0], act_space.low, act_space.high)
    raise CleanILError(f"{env_id} has action space {act_space}: cleanil needs Discrete or a flat Box")


def make_vec_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    """Synchronous vector env in SAME_STEP autoreset mode: when a sub-env ends, ``step`` already
    returns the first observation of its next episode, and the true last observation of the
    finished episode is in ``info["final_obs"][i]`` (mask ``info["_final_obs"]``)."""
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )


def true_next_obs(next_obs: np.ndarray, info: dict) -> np.ndarray:
    """The observation each sub-env actually reached (the final one for envs that just ended)."""
    if "_final_obs" not in info or not info["_final_obs"].any():
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(info["_final_obs"]):
        real[i] = info["final_obs"][i]
    return real


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CleanILError(f"--device {name} was asked for, but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CleanILError(f"unknown device '{name}': use auto, cpu or cuda") from None


# ----------------------------------------------------------------------------- networks
def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...] = (256, 256), act: type = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), act()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Normalizer(nn.Module):
    """Fixed observation standardization (mean, std buffers saved in the state dict)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


class CategoricalActor(nn.Module):
    """Logits over discrete actions; DQN's Q-network has the same shape (greedy = argmax)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.norm, self.net = Normalizer(obs_dim), mlp(obs_dim, n_actions, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(obs))

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        logits = self(obs)
        if deterministic:
            return logits.argmax(-1)
        return torch.distributions.Categorical(logits=logits).sample()


class TanhGaussianActor(nn.Module):
    """a = bias + scale * tanh(u), u ~ N(mu(s), sigma(s)^2), with log-std clamped to a range."""

    def __init__(self, obs_dim: int, act_dim: int, action_low: Any, action_high: Any,
                 hidden: tuple[int, ...] = (256, 256), log_std_range: tuple[float, float] = (-5.0, 2.0)):  # fmt: skip
        super().__init__()
        self.norm, self.net = Normalizer(obs_dim), mlp(obs_dim, 2 * act_dim, hidden)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("bias", (high + low) / 2)
        self.log_std_range = log_std_range

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(self.norm(obs)).chunk(2, dim=-1)
        lo, hi = self.log_std_range
        return mean, lo + 0.5 * (hi - lo) * (torch.tanh(log_std) + 1)

    def log_prob_of_pre_tanh(self, u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) = log N(u; mu, sigma) - sum_i log(scale_i * (1 - tanh(u_i)^2))."""
        gauss = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
        # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), numerically stable
        log_det = (2 * (math.log(2) - u - nn.functional.softplus(-2 * u)) + self.scale.log()).sum(-1)
        return gauss - log_det

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized sample and its log-probability."""
        mean, log_std = self(obs)
        u = mean + log_std.exp() * torch.randn_like(mean)
        return self.bias + self.scale * torch.tanh(u), self.log_prob_of_pre_tanh(u, mean, log_std)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return self.bias + self.scale * torch.tanh(self(obs)[0])
        return self.sample(obs)[0]


class TwinQNetwork(nn.Module):
    """n independent Q(s, a) MLPs (ReLU) evaluated as one batched network: layer k's weights are stacked
    as [n, in, out] and applied with one ``baddbmm``, so twin critics cost one matmul per layer, not n.
    Initialized like ``nn.Linear`` (uniform in +-1/sqrt(fan_in)). Returns Q-values shaped [n, batch].
    ``layer_norm``: each hidden layer is linear -> LayerNorm (with a per-twin scale and shift) -> ReLU,
    which bounds how far Q can extrapolate to unseen actions (Ball et al. 2023, RLPD)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256), n: int = 2,
                 layer_norm: bool = False):  # fmt: skip
        super().__init__()
        dims = [obs_dim + act_dim, *hidden, 1]
        shapes = [(i, o, 1 / math.sqrt(i)) for i, o in zip(dims[:-1], dims[1:], strict=True)]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(n, i, o).uniform_(-b, b)) for i, o, b in shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n, 1, o).uniform_(-b, b)) for _, o, b in shapes)
        self.ln_scales = nn.ParameterList(nn.Parameter(torch.ones(n, 1, h)) for h in hidden) if layer_norm else None
        self.ln_shifts = nn.ParameterList(nn.Parameter(torch.zeros(n, 1, h)) for h in hidden) if layer_norm else None

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1).expand(len(self.weights[0]), -1, -1)
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if k < len(self.weights) - 1:
                if self.ln_scales is not None:  # (x - mean) / std over the layer's units, then scale and shift
                    x = F.layer_norm(x, x.shape[-1:]) * self.ln_scales[k] + self.ln_shifts[k]
                x = torch.relu(x)
        return x.squeeze(-1)


def make_actor(spec: EnvSpec, hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """Categorical actor for discrete actions, tanh-Gaussian actor for continuous ones."""
    if spec.discrete:
        return CategoricalActor(spec.obs_dim, spec.act_dim, hidden)
    return TanhGaussianActor(spec.obs_dim, spec.act_dim, spec.action_low, spec.action_high, hidden)


COMPILE_MIN_UPDATES = 20_000  # compiling costs ~20-30 s once and saves ~2 ms per update: worth it from here


def maybe_compile(fn: Callable, enabled: bool | None, updates: int = 0, cudagraphs: bool = False) -> Callable:
    """``torch.compile`` an update step as one graph (gradients by ``torch.autograd.grad`` traced into it).
    ``enabled`` None: compile if the run makes at least ``COMPILE_MIN_UPDATES`` calls (``updates``).
    ``cudagraphs``: on a GPU, replay the compiled step as a CUDA graph (mode reduce-overhead)."""
    if not (enabled if enabled is not None else updates >= COMPILE_MIN_UPDATES):
        return fn
    if hasattr(torch._dynamo.config, "trace_autograd_ops"):
        torch._dynamo.config.trace_autograd_ops = True
    mode = "reduce-overhead" if cudagraphs and torch.cuda.is_available() else None
    current = torch.compile(fn, fullgraph=True, mode=mode)

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal current
        try:
            return current(*args, **kwargs)
        except Exception as e:  # e.g. no C++ compiler on this machine: say so once and run eagerly
            if current is fn:
                raise
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            print(f"warning: torch.compile failed ({why}); {fn.__name__} runs eagerly", file=sys.stderr)
            current = fn
            return fn(*args, **kwargs)

    return call


class Adam:
    """Adam (Kingma & Ba 2015) on a list of tensors, written with foreach ops so that a whole update
    (loss, ``torch.autograd.grad``, optimizer step) compiles into one graph; ``torch.optim.Adam``
    breaks such a graph. Same arithmetic as ``torch.optim.Adam`` with default settings:
        m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
        theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)."""

    def __init__(self, params: Any, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros((), device=self.params[0].device)  # a tensor: no recompile as it counts
        if self.t.is_cuda:  # fixed addresses, so that a CUDA graph can update the state in place
            for state in [*self.m, *self.v, self.t]:
                torch._dynamo.mark_static_address(state)

    def step(self, loss: torch.Tensor) -> None:
        """Differentiate ``loss`` with respect to this optimizer's parameters only, and take one step."""
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            self.t.add_(1)
            torch._foreach_lerp_(self.m, grads, 1 - self.b1)
            torch._foreach_mul_(self.v, self.b2)
            torch._foreach_addcmul_(self.v, grads, grads, 1 - self.b2)
            denom = torch._foreach_div(torch._foreach_sqrt(self.v), (1 - self.b2**self.t).sqrt())
            torch._foreach_add_(denom, self.eps)
            update = torch._foreach_div(self.m, denom)
            torch._foreach_mul_(update, -self.lr / (1 - self.b1**self.t))
            torch._foreach_add_(self.params, update)

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        """Copy in place: a compiled update keeps pointing at the same tensors."""
        with torch.no_grad():
            torch._foreach_copy_([*self.m, *self.v, self.t], [*state["m"], *state["v"], state["t"]])


def save_policy(path: str | Path, actor: nn.Module, spec: EnvSpec, hidden: tuple[int, ...], **extra: Any) -> None:
    """Save an actor built by ``make_actor`` so that ``load_policy`` can rebuild it."""
    state = {k: v.detach().cpu() for k, v in actor.state_dict().items()}
    atomic_torch_save({"env_id": spec.env_id, "hidden": list(hidden), "state_dict": state, **extra}, path)


def load_policy(path: str | Path, spec: EnvSpec) -> nn.Module:
    """Rebuild an actor saved by ``save_policy``, checking that it fits the env."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
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
def expert_paths(env_id: str) -> tuple[Path, Path]:
    return EXPERT_DIR / f"{env_id}.pt", EXPERT_DIR / f"{env_id}.json"


EXPERT_META_KEYS = {"env_id": str, "algo": str, "return_mean": float, "return_std": float,
                    "random_return_mean": float, "eval_episodes": int, "total_steps": int,
                    "command": str, "versions": dict}  # fmt: skip


def load_expert_metadata(env_id: str) -> dict:
    path = expert_paths(env_id)[1]
    if not path.exists():
        shipped = sorted(p.stem for p in EXPERT_DIR.glob("*.json"))
        raise CleanILError(f"no shipped expert for {env_id} (shipped: {', '.join(shipped) or 'none'}); "
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
        envs = make_vec_env(env_id, ROLLOUT_CHUNK)
        obs, _ = envs.reset(seed=[seed + start + i for i in range(ROLLOUT_CHUNK)])
        alive = np.arange(ROLLOUT_CHUNK) < episodes - start
        ret, length = np.zeros(ROLLOUT_CHUNK), np.zeros(ROLLOUT_CHUNK, dtype=np.int64)
        per_env = [{k: [] for k in DEMO_KEYS} for _ in range(ROLLOUT_CHUNK)]
        while alive.any():
            action = policy(obs)
            next_obs, reward, term, trunc, info = envs.step(action)
            real_next = true_next_obs(next_obs, info)
            for i in np.flatnonzero(alive) if record else ():
                row = (obs[i], action[i], reward[i], real_next[i], term[i], trunc[i])
                for k, v in zip(DEMO_KEYS, row, strict=True):
                    per_env[i][k].append(v)
            ret += reward * alive
            length += alive
            alive &= ~(term | trunc)
            obs = next_obs
        envs.close()
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


# ----------------------------------------------------------------------------- demonstrations
def validate_demos(data: dict, spec: EnvSpec, source: str) -> dict:
    """Check a demo dict against the env; return it with canonical dtypes or raise CleanILError."""
    missing = [k for k in DEMO_KEYS if k not in data]
    if missing:
        raise CleanILError(f"demo file {source} lacks the array(s) {', '.join(missing)}")
    n = len(data["obs"])
    if n == 0 or any(len(data[k]) != n for k in DEMO_KEYS):
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
    act = data["actions"]
    if spec.discrete:
        if act.ndim != 1 or not np.issubdtype(act.dtype, np.integer) or act.min() < 0 or act.max() >= spec.act_dim:
            raise CleanILError(f"demo file {source} must hold integer actions in [0, {spec.act_dim}) for {spec.env_id}")
    elif act.shape[1:] != (spec.act_dim,):
        raise CleanILError(f"demo file {source} has actions of shape {act.shape[1:]} per step, "
                           f"but {spec.env_id} actions have shape ({spec.act_dim},)")  # fmt: skip
    for key in ("obs", "actions", "rewards", "next_obs"):
        if not np.isfinite(data[key]).all():
            raise CleanILError(f"demo file {source} contains NaN or infinite values in '{key}'")
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
    out["actions"] = act.astype(np.int64 if spec.discrete else np.float32)
    out.update(terminated=np.asarray(data["terminated"], bool), truncated=np.asarray(data["truncated"], bool))
    return out


def first_episodes(data: dict, num: int, source: str) -> dict:
    ends = np.flatnonzero(data["terminated"] | data["truncated"])
    if num > len(ends):
        raise CleanILError(f"demo file {source} holds {len(ends)} episode(s), but {num} were asked for")
    return {k: v[: ends[num - 1] + 1] for k, v in data.items()}


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
    """Roll out the shipped expert deterministically: episode k is reset with a fixed seed."""
    expert = numpy_policy(load_expert(env_id), torch.device("cpu"))
    return rollout(expert, env_id, num, DEMO_SEED_BASE + 10_000 * seed, record=True)["transitions"]


def load_demos(env_id: str, num: int, path: str | None = None, seed: int = 0) -> dict:
    """The first ``num`` episodes of a user file (``path``) or of the shipped expert's cached demos."""
    spec = env_spec(env_id)
    if num < 1:
        raise CleanILError(f"--num-demos must be at least 1, got {num}")
    if path is not None:
        return first_episodes(load_demo_file(path, spec), num, path)
    load_expert_metadata(env_id)  # clear error if none ships
    digest = hashlib.sha256(expert_paths(env_id)[0].read_bytes()).hexdigest()[:10]
    cache = Path(os.environ.get("CLEANIL_CACHE", Path.home() / ".cache" / "cleanil")) / "demos"
    file = cache / f"{env_id}__n{num}__seed{seed}__{digest}.npz"
    if not file.exists():  # leaves the global RNGs as they were: a run is the same with or without a cache
        np_state = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            save_demo_file(file, generate_demos(env_id, num, seed))
        np.random.set_state(np_state)
    return load_demo_file(file, spec)


# ----------------------------------------------------------------------------- replay buffers
def make_replay_buffer(capacity: int, batch_size: int, device: torch.device) -> ReplayBuffer:
    """Uniform replay of TensorDict transitions, stored as preallocated tensors on ``device``."""
    from torchrl.data import LazyTensorStorage, ReplayBuffer  # imported here: torchrl takes seconds to import

    return ReplayBuffer(storage=LazyTensorStorage(capacity, device=device), batch_size=batch_size)


def to_tensordict(data: dict, device: torch.device) -> TensorDict:
    from tensordict import TensorDict

    return TensorDict({k: torch.as_tensor(v, device=device) for k, v in data.items()}, batch_size=[len(data["obs"])])


# ----------------------------------------------------------------------------- runs and logging
def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "torchrl": version("torchrl"),
            "gymnasium": gym.__version__, "mujoco": mujoco.__version__, "numpy": np.__version__}  # fmt: skip


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(), "gpu": gpu}


class RunStopped(CleanILError):
    """The run stopped early (a signal, a non-finite value); ``code`` is the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _state_of(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if hasattr(obj, "writer"):  # a torchrl replay buffer: its filled rows (not the whole capacity) and cursor
        return {"data": obj.storage[: len(obj)].clone() if len(obj) else None, "writer": obj.writer.state_dict()}
    return obj.state_dict()


def _load_state(obj: Any, state: Any) -> None:
    if isinstance(obj, torch.Tensor):
        with torch.no_grad():
            obj.copy_(state)
    elif hasattr(obj, "writer"):
        obj.empty()
        if state["data"] is not None:
            obj.extend(state["data"].to(obj.storage.device))
        obj.writer.load_state_dict(state["writer"])
    else:
        obj.load_state_dict(state)


class Run:
    """A run's outputs, runs/<env>__<algo>__<seed>__<time>/{config.json, metrics.jsonl, checkpoint.pt} (and
    optional wandb), and what lets it survive interruption and divergence.

    - With ``--resume DIR`` it reopens that run: ``start`` is the step of DIR/checkpoint.pt, rows of
      metrics.jsonl past it are dropped (the resumed run appends without duplicate steps), the clock goes on.
    - ``restore(objects)`` registers what the training loop needs to continue (modules, optimizers,
      replay buffers, tensors, by name) and, when resuming, loads the checkpoint into them, with the RNG states.
    - ``tick(step)``, after each step of the loop, writes checkpoint.pt atomically every
      ``--checkpoint-every`` steps and at the last step; on SIGINT or SIGTERM it writes one and stops
      with a line saying how to resume.
    - ``log`` writes a metrics row (and a line per evaluation), and stops the run, naming the quantity and the
      step, when a loss or a parameter is not finite. A checkpoint is never written from non-finite
      parameters, so the last one on disk stays good.
    """

    active: Run | None = None  # the run holding the signal handlers (one trains at a time in a process)

    def __init__(self, args: Any, algo: str, env_id: str, total: int):
        if Run.active is not None:  # a run that ended in an exception: give its handlers back
            Run.active.close()
        state, resume = None, Path(args.resume) if getattr(args, "resume", None) else None
        if resume:
            path = resume / "checkpoint.pt"
            if not path.is_file():
                raise CleanILError(f"--resume {resume}: no checkpoint.pt in that directory")
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e:  # noqa: BLE001 - any failure to unpickle means the same thing to the user
                raise CleanILError(f"{path} cannot be read ({type(e).__name__}): not a cleanil checkpoint") from None
            if state["step"] >= total:
                raise CleanILError(f"--resume {resume}: the run already reached step {state['step']}; "
                                   f"pass a larger --total-steps to continue it")  # fmt: skip
        self.state, self.start, self.total = state, state["step"] if state else 0, total
        self.every = args.checkpoint_every
        default_name = f"{env_id}__{algo}__{args.seed}__{int(time.time())}"
        self.name = resume.name if resume else getattr(args, "run_name", None) or default_name
        self.dir = resume or Path(args.run_dir) / self.name
        config = {**dataclasses.asdict(args), "env_id": env_id, "algorithm": algo, "command": " ".join(sys.argv),
                  "git": git_revision(), "versions": versions(), "machine": machine()}  # fmt: skip
        if resume:
            rows = (self.dir / "metrics.jsonl").read_text().splitlines(keepends=True)
            kept = "".join(r for r in rows if json.loads(r)["global_step"] <= self.start)
            (self.dir / "metrics.jsonl").write_text(kept)
        else:
            if self.dir.exists() and not getattr(args, "overwrite", False):
                raise CleanILError(f"{self.dir} already exists: pass --overwrite to replace it, "
                                   f"or --resume {self.dir} to continue it")  # fmt: skip
            try:
                if self.dir.exists():
                    shutil.rmtree(self.dir)
                self.dir.mkdir(parents=True, exist_ok=False)
                (self.dir / "config.json").write_text(json.dumps(config, indent=2))
            except OSError as e:
                raise CleanILError(f"cannot create run directory {self.dir}: {e.strerror or e}") from None
        self.metrics = open(self.dir / "metrics.jsonl", "a")
        self.start_time, self.wandb = time.time() - (state["elapsed"] if state else 0.0), None
        if args.track:
            import wandb

            netrc = Path.home() / ".netrc"
            logged_in = os.environ.get("WANDB_API_KEY") or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
            mode = os.environ.get("WANDB_MODE") or ("online" if logged_in else "offline")
            self.wandb = wandb.init(project=args.wandb_project, entity=args.wandb_entity, name=self.name,
                                    config=config, dir=str(self.dir), mode=mode, resume="allow" if resume else None,
                                    id=self.name.replace("__", "-").replace(".", "-"))  # fmt: skip
        print(f"run {self.name}: {'resumed' if resume else 'outputs'} in {self.dir}")
        self.objects, self.extra, self.signal, self.saved = {}, None, None, self.start if state else None
        self.next_ckpt = self._next_checkpoint(self.start)
        self.handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        Run.active = self
        if state:
            print(f"resuming at step {self.start}")

    def _next_checkpoint(self, step: int) -> int:
        return (step // self.every + 1) * self.every if self.every else self.total

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum
        tqdm.write(f"{signal.Signals(signum).name}: finishing this step, then writing a checkpoint")

    def restore(self, objects: dict, extra: Callable[[], dict] | None = None) -> dict | None:
        """Register ``objects`` (and ``extra()``: more state to save); load the checkpoint into them if resuming,
        and return the extra state it saved."""
        self.objects, self.extra = objects, extra
        if self.state is None:
            return None
        for name, obj in objects.items():
            _load_state(obj, self.state["objects"][name])
        rng = self.state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return self.state["extra"]

    def _check_finite(self, step: int, metrics: dict | None = None) -> None:
        bad = [k for k, v in (metrics or {}).items() if "loss" in k and not math.isfinite(float(v))]
        flags = []  # (name, finite?) of every registered parameter, checked with a single host sync
        for name, obj in self.objects.items():
            named = obj.named_parameters() if isinstance(obj, nn.Module) else [("", obj)] * torch.is_tensor(obj)
            flags += [(f"{name}.{n}".strip("."), p.isfinite().all()) for n, p in named]
        if flags and not bool(torch.stack([f for _, f in flags]).all()):
            bad += [f"parameter {n}" for n, f in flags if not f]
        if bad:
            last = f"the last good checkpoint (step {self.saved}) is in {self.dir}"
            last = last if self.saved is not None else "no checkpoint was written"
            self.close()
            raise RunStopped(f"{bad[0]} is not finite at step {step}: stopped; {last}", 3)

    def log(self, step: int, metrics: dict, env_steps: int | None = None) -> None:
        self._check_finite(step, metrics)
        elapsed = time.time() - self.start_time
        row = {"global_step": step, "time": round(elapsed, 3)}
        if env_steps is not None:
            row.update(env_steps=env_steps, env_steps_per_s=round(env_steps / max(elapsed, 1e-9), 2))
        row.update({k: float(v) for k, v in metrics.items()})
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        if self.wandb is not None:
            self.wandb.log(row, step=step)
        if "eval/return" in row:
            norm = row.get("eval/normalized_return")
            tqdm.write(f"step {step}: eval return {row['eval/return']:.1f}"
                       + ("" if norm is None else f", normalized {norm:.3f}"))  # fmt: skip

    def tick(self, step: int) -> None:
        """After each step: checkpoint when due (and at the last step); on a signal, checkpoint and stop."""
        if self.signal is None and step < self.next_ckpt and step < self.total:
            return
        self._check_finite(step)
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip
        state = {"step": step, "elapsed": time.time() - self.start_time, "rng": rng,
                 "objects": {k: _state_of(v) for k, v in self.objects.items()},
                 "extra": self.extra() if self.extra else None}  # fmt: skip
        atomic_torch_save(state, self.dir / "checkpoint.pt")
        self.saved, self.next_ckpt = step, self._next_checkpoint(step)
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            self.close()
            raise RunStopped(f"{name} at step {step}: checkpoint written; continue with "
                             f"python {sys.argv[0]} --resume {self.dir}", 128 + self.signal)  # fmt: skip

    def close(self) -> None:
        for s, h in self.handlers.items():
            signal.signal(s, h)
        self.handlers, Run.active = {}, None
        if not self.metrics.closed:
            self.metrics.close()
            if self.wandb is not None:
                self.wandb.finish()


def progress(total: int, desc: str, initial: int = 0) -> tqdm:
    return tqdm(total=total, desc=desc, initial=initial, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


# ----------------------------------------------------------------------------- command line
def flag_value(argv: list[str], name: str) -> str | None:
    """The value given to ``--name`` (as ``--name V`` or ``--name=V``) in ``argv``, if any."""
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def parse_args(args_cls: type, config_dir: str) -> Any:
    """Parse flags with tyro. Defaults come from the saved config.json of the run given to
    ``--resume`` if any, else from ``configs/<config_dir>/<EnvId>.yaml`` if it exists; flags given
    on the command line win over both."""
    argv, loaded, fields = sys.argv[1:], {}, args_cls.__dataclass_fields__
    resume, env = flag_value(argv, "resume"), flag_value(argv, "env")
    if "-h" in argv or "--help" in argv:
        pass
    elif resume is not None and "resume" in fields:
        path = Path(resume) / "config.json"
        if not path.is_file():
            raise CleanILError(f"--resume {resume}: no config.json in that directory")
        loaded = {k: v for k, v in json.loads(path.read_text()).items() if k in fields and k != "resume"}
    elif env is not None:
        path = REPO_ROOT / "configs" / config_dir / f"{ENV_ALIASES.get(env, env)}.yaml"
        if path.exists():
            import yaml

            loaded = yaml.safe_load(path.read_text()) or {}
            unknown = sorted(set(loaded) - set(fields))
            if unknown:
                raise CleanILError(f"{path} sets unknown field(s) {', '.join(unknown)}")
            print(f"defaults from {path.relative_to(REPO_ROOT)}: {loaded}")
    defaults = {k: tuple(v) if isinstance(v, list) else v for k, v in loaded.items()}
    return tyro.cli(args_cls, default=args_cls(**defaults) if defaults else None)


def run_cli(main: Callable, args_cls: type, config_dir: str) -> None:
    """Entry point of every script: parse, run, and turn CleanILError into one line and exit 2."""
    try:
        main(parse_args(args_cls, config_dir))
    except CleanILError as e:
        for bar in list(getattr(tqdm, "_instances", ())):  # clear progress bars so the error stands alone
            bar.leave = False
            bar.close()
        print(f"error: {e}" if not isinstance(e, RunStopped) else str(e), file=sys.stderr)
        sys.exit(getattr(e, "code", 2))
