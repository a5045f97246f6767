"""Shared test helpers: a private demo cache and a runner for the scripts' real command lines."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from cleanil import envs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep generated demos out of the user's cache; shared by every test of the session."""
    cache = tmp_path_factory.mktemp("cleanil_cache")
    os.environ["CLEANIL_CACHE"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def restore_process_state():
    """Scripts run in-process change process-wide state: sys.path (a module:function expert or gatherer),
    flush-denormal (mce_irl.py) and the env kwargs of env ids (envs.ENV_KWARGS). Put it back after each test,
    so that no test passes or fails because of another that ran before it. (Two settings stay: maybe_compile
    turns on dynamo's trace_autograd_ops before every compile, and turning it off and on again within one
    process makes torch 2.13 refuse to trace torch.autograd.grad at the next compile; torch.distributions'
    validation is changed only by run_cli, which tests call in subprocesses.)"""
    path = list(sys.path)
    yield
    sys.path[:] = path
    torch.set_flush_denormal(False)
    envs.ENV_KWARGS.clear()  # --env-kwargs given to an in-process run or resolve_env_id


def run_cli(script: str, *flags: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> <flags>`` from the repository root, one thread, no wandb network."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, script, *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def only_run_dir(root: Path) -> Path:
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py by its path (scripts/ is not a package, and nothing is put on sys.path)."""
    if f"scripts.{name}" not in sys.modules:
        spec = importlib.util.spec_from_file_location(f"scripts.{name}", REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[f"scripts.{name}"]
