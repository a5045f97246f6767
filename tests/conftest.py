"""Shared test helpers: a private demo cache and a runner for the scripts' real command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep generated demos out of the user's cache; shared by every test of the session."""
    cache = tmp_path_factory.mktemp("cleanil_cache")
    os.environ["CLEANIL_CACHE"] = str(cache)
    return cache


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
