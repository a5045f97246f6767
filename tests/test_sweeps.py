"""Every W&B sweep spec under configs/sweeps/ launches a real script with real flags: each parameter
is a field of the script's Args, and a command line built from the spec the way the sweep agent
builds it (``--name=value``) parses with tyro."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import tyro
import yaml
from conftest import REPO, load_script

SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def test_there_are_sweeps():
    assert len(SWEEPS) >= 5


def candidate_values(spec: dict) -> list:
    """The values a sweep can give a parameter: its value, its values, or its range's ends."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    return [spec["min"], spec["max"]]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_matches_the_script(path: Path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"] == {"name": "eval/normalized_return", "goal": "maximize"}
    program = Path(sweep["program"])
    assert (REPO / program).is_file() and program.parts[0] == "cleanil"
    assert sweep["command"][:3] == ["${env}", "python", "${program}"] and sweep["command"][-1] == "${args}"
    args_cls = importlib.import_module(f"cleanil.{program.stem}").Args
    fields = args_cls.__dataclass_fields__
    unknown = [name for name in sweep["parameters"] if name not in fields]
    assert not unknown, f"{path.name}: not flags of {program}: {unknown}"
    fixed = sweep["command"][3:-1]  # e.g. --track
    for i in range(max(len(candidate_values(s)) for s in sweep["parameters"].values())):
        flags = [
            f"--{name}={candidate_values(s)[i % len(candidate_values(s))]}" for name, s in sweep["parameters"].items()
        ]
        parsed = tyro.cli(args_cls, args=[*fixed, *flags])
        for name, s in sweep["parameters"].items():
            value = candidate_values(s)[i % len(candidate_values(s))]
            assert (
                getattr(parsed, name) == pytest.approx(value)
                if isinstance(value, float)
                else str(value) == str(getattr(parsed, name))
            )


CONFIGS = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name != "sweeps")
VARIANTS = {"gaifo": ("gail", ["--observation-only"])}  # config folders of a script run with a flag


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_file_loads_into_the_script(path: Path, monkeypatch):
    """configs/<algo>/<EnvId>.yaml names a registered env and sets only real fields of the script's Args,
    and ``--env <EnvId>`` picks it up as defaults through the script's own parser."""
    import gymnasium as gym

    from cleanil import runs

    env_id = path.stem
    assert env_id in gym.registry, f"{path}: no gymnasium env {env_id}"
    algo = path.parent.name
    script, flags = VARIANTS.get(algo, (algo, []))  # configs/gaifo/ belongs to gail.py --observation-only
    module = load_script(script) if script == "train_expert" else importlib.import_module(f"cleanil.{script}")
    loaded = yaml.safe_load(path.read_text())
    monkeypatch.setattr("sys.argv", [script, "--env", env_id, *flags])
    parsed = runs.parse_args(module.Args, getattr(module, "config_dir", script))
    for name, value in loaded.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(parsed, name) == expected, f"{path}: {name}"
