"""Runs: outputs, checkpoints, resuming, the non-finite guard, and the command line of every script.

- ``Run``: runs/<env>__<algo>__<seed>__<time>/{config.json, metrics.jsonl, checkpoint.pt}, optional wandb,
  checkpoints every ``--checkpoint-every`` steps and on SIGINT/SIGTERM, ``--resume``, and a stop with one
  line when a loss or a parameter is not finite.
- ``parse_args`` (defaults from configs/<algo>/<EnvId>.yaml or a resumed run's config.json, flags win) and
  ``run_cli``, the entry point of every script, which also sets up the process (``configure_process``).
- ``set_seed``, ``get_device``, ``progress`` (tqdm bars) and the facts a record keeps (versions, git, machine).
"""

from __future__ import annotations

import dataclasses
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
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import tyro
from tqdm import tqdm

from cleanil.envs import ENV_ALIASES, REPO_ROOT, CleanILError, atomic_torch_save, check_video_support, record_video


def configure_process() -> None:
    """Process-wide settings every script runs under, applied by ``run_cli`` (never at import):
    - torchrl's per-storage INFO lines silenced;
    - torch.distributions' argument checks off: they cost a host sync per distribution built and turn a
      NaN into a traceback deep in torch, where Run's guard reports non-finite losses and parameters;
    - MuJoCo's warnings forwarded to stderr, except the one every gymnasium MuJoCo v5 model triggers at
      load under MuJoCo 4 ('settotalmass' is deprecated): it says nothing about the user's run."""
    os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")  # read by torchrl when it is imported
    logging.getLogger("torchrl").setLevel(os.environ["RL_LOGGING_LEVEL"])  # and if it already was
    torch.distributions.Distribution.set_default_validate_args(False)
    mujoco.set_mju_user_warning(_mujoco_warning)


def _mujoco_warning(message: str) -> None:
    if "settotalmass" not in message:
        print(f"MuJoCo warning: {message}", file=sys.stderr)


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


BUDGET_FLAGS = ("total_steps", "rounds", "eval_every", "eval_episodes", "log_every", "batch_size")


def check_budget(args: Any, off_policy: bool = False, names: tuple[str, ...] = BUDGET_FLAGS) -> None:
    """Refuse, in one line naming the flag, a budget under which a run would do nothing or divide by zero:
    a step count or interval in ``names`` below 1, or (off-policy) --learning-starts at or past --total-steps."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CleanILError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if off_policy and args.learning_starts >= args.total_steps:
        raise CleanILError(f"--learning-starts {args.learning_starts} is not below --total-steps "
                           f"{args.total_steps}: no update would run")  # fmt: skip


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
        resume = Path(args.resume) if getattr(args, "resume", None) else None
        state = self._load_checkpoint(resume, total) if resume else None
        self.state, self.start, self.total = state, state["step"] if state else 0, total
        self.every = args.checkpoint_every
        default_name = f"{env_id}__{algo}__{args.seed}__{int(time.time())}"
        self.name = resume.name if resume else getattr(args, "run_name", None) or default_name
        self.dir = resume or Path(args.run_dir) / self.name
        config = {**dataclasses.asdict(args), "env_id": env_id, "algorithm": algo, "command": " ".join(sys.argv),
                  "git": git_revision(), "versions": versions(), "machine": machine()}  # fmt: skip
        if getattr(args, "capture_video", False):  # refused now rather than after training
            check_video_support()
        self.env_id, self.seed, self.capture_video = env_id, args.seed, getattr(args, "capture_video", False)
        self._prepare_directory(config, resume is not None, getattr(args, "overwrite", False))
        self.metrics = open(self.dir / "metrics.jsonl", "a")
        self.start_time = time.time() - (state["elapsed"] if state else 0.0)
        self.wandb = self._start_wandb(args, config, resume is not None) if args.track else None
        print(f"run {self.name}: {'resumed' if resume else 'outputs'} in {self.dir}")
        self.objects, self.extra, self.signal, self.saved = {}, None, None, self.start if state else None
        self.next_ckpt = self._next_checkpoint(self.start)
        self.handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        Run.active = self
        if state:
            print(f"resuming at step {self.start}")

    @staticmethod
    def _load_checkpoint(resume: Path, total: int) -> dict:
        """The checkpoint of the run being resumed, which must not have reached ``total`` already."""
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
        return state

    def _prepare_directory(self, config: dict, resuming: bool, overwrite: bool) -> None:
        """A new run gets a fresh directory with config.json (an existing one is replaced only with
        ``overwrite``); a resumed run drops the metrics rows logged after its checkpoint."""
        if resuming:
            rows = (self.dir / "metrics.jsonl").read_text().splitlines(keepends=True)
            kept = "".join(r for r in rows if json.loads(r)["global_step"] <= self.start)
            (self.dir / "metrics.jsonl").write_text(kept)
            return
        if self.dir.exists() and not overwrite:
            raise CleanILError(f"{self.dir} already exists: pass --overwrite to replace it, "
                               f"or --resume {self.dir} to continue it")  # fmt: skip
        try:
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True, exist_ok=False)
            (self.dir / "config.json").write_text(json.dumps(config, indent=2))
        except OSError as e:
            raise CleanILError(f"cannot create run directory {self.dir}: {e.strerror or e}") from None

    def _start_wandb(self, args: Any, config: dict, resuming: bool) -> Any:
        """A wandb run, online only when logged in (or WANDB_MODE says so); never asks for a login."""
        import wandb

        netrc = Path.home() / ".netrc"
        logged_in = os.environ.get("WANDB_API_KEY") or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
        mode = os.environ.get("WANDB_MODE") or ("online" if logged_in else "offline")
        return wandb.init(project=args.wandb_project, entity=args.wandb_entity, name=self.name, config=config,
                          dir=str(self.dir), mode=mode, resume="allow" if resuming else None,
                          id=self.name.replace("__", "-").replace(".", "-"))  # fmt: skip

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
        self.save(step)
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            self.close()
            raise RunStopped(f"{name} at step {step}: checkpoint written; continue with "
                             f"python {sys.argv[0]} --resume {self.dir}", 128 + self.signal)  # fmt: skip

    def save(self, step: int) -> None:
        """Write checkpoint.pt now (atomically): the registered objects, the RNG states and the extra state."""
        self._check_finite(step)
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip
        state = {"step": step, "elapsed": time.time() - self.start_time, "rng": rng,
                 "objects": {k: _state_of(v) for k, v in self.objects.items()},
                 "extra": self.extra() if self.extra else None}  # fmt: skip
        atomic_torch_save(state, self.dir / "checkpoint.pt")
        self.saved, self.next_ckpt = step, self._next_checkpoint(step)

    def record_video(self, policy: Callable) -> None:
        """With ``--capture-video``: one deterministic evaluation episode of ``policy`` to videos/final.mp4."""
        if self.capture_video:
            record_video(policy, self.env_id, self.dir / "videos" / "final.mp4", self.seed)

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


def parse_args(args_cls: type, config_dir: str | Callable[[list[str]], str]) -> Any:
    """Parse flags with tyro. Defaults come from the saved config.json of the run given to
    ``--resume`` if any, else from ``configs/<config_dir>/<EnvId>.yaml`` if it exists (less its episode
    counts when ``--demos`` names a file: those are the file's); flags given on the command line win over both.
    ``config_dir`` may be a function of the command line (a flag that turns a script into another algorithm)."""
    argv, loaded, fields = sys.argv[1:], {}, args_cls.__dataclass_fields__
    config_dir = config_dir(argv) if callable(config_dir) else config_dir
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
            if flag_value(argv, "demos") is not None:  # its episode counts are of the expert's demos, not a file's
                loaded = {k: v for k, v in loaded.items() if k not in ("num_demos", "heldout_demos")}
            print(f"defaults from {path.relative_to(REPO_ROOT)}: {loaded}")
    defaults = {k: tuple(v) if isinstance(v, list) else v for k, v in loaded.items()}
    return tyro.cli(args_cls, default=args_cls(**defaults) if defaults else None)


def run_cli(main: Callable, args_cls: type, config_dir: str | Callable[[list[str]], str]) -> None:
    """Entry point of every script: set up the process, parse, run, and turn CleanILError into one line
    and exit 2."""
    configure_process()
    try:
        main(parse_args(args_cls, config_dir))
    except CleanILError as e:
        for bar in list(getattr(tqdm, "_instances", ())):  # clear progress bars so the error stands alone
            bar.leave = False
            bar.close()
        print(f"error: {e}" if not isinstance(e, RunStopped) else str(e), file=sys.stderr)
        sys.exit(getattr(e, "code", 2))
