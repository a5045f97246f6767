"""The compiled update steps compute what the eager ones do: the same run, eager and compiled, with the
compiled graph drawing its random numbers like eager code, logs the same losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics

from cleanil import airl, drlhp, gail, iqlearn, nets

SAC = {"env": "Pendulum", "total_steps": 310, "learning_starts": 300, "log_every": 1, "eval_every": 310,
       "eval_episodes": 1, "hidden": (32, 32)}  # fmt: skip
CASES = {
    "gail": (gail, SAC | {"num_demos": 2, "disc_hidden": (16, 16), "batch_size": 64}),
    "airl": (airl, SAC | {"num_demos": 2, "disc_hidden": (16, 16), "batch_size": 64}),
    "iqlearn": (iqlearn, SAC | {"num_demos": 1, "heldout_demos": 1, "batch_size": 64}),
    "iqlearn_discrete": (iqlearn, SAC | {"env": "CartPole", "num_demos": 1, "heldout_demos": 1, "batch_size": 64}),
    "drlhp": (
        drlhp,
        SAC | {"num_queries": 20, "reward_updates": 5, "fragment_length": 10, "query_every": 100, "batch_size": 64},
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_update_matches_eager(tmp_path, capsys, name):
    mod, kwargs = CASES[name]
    losses = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        run_dir = tmp_path / str(compiled)
        with torch._inductor.config.patch(fallback_random=True):  # compiled RNG draws = eager's
            mod.main(mod.Args(**kwargs, compile=compiled, run_dir=str(run_dir)))
        rows = read_metrics(only_run_dir(run_dir))
        losses[compiled] = [{k: v for k, v in r.items() if k.startswith("losses/")} for r in rows if "alpha" in r]
    assert "torch.compile failed" not in capsys.readouterr().err  # no silent fallback to eager
    eager, compiled = losses[False], losses[True]
    assert len(eager) == len(compiled) == 10 and eager[0].keys() == compiled[0].keys()
    for k in eager[0]:
        a, b = np.array([r[k] for r in eager]), np.array([r[k] for r in compiled])
        assert a[0] == pytest.approx(b[0], rel=1e-4, abs=1e-5), k  # the first update: same inputs, same math
        assert a == pytest.approx(b, rel=1e-2, abs=1e-3), k  # later ones drift only by float rounding


def test_compile_failure_falls_back_to_eager_and_says_why(capsys):
    """A step that cannot be compiled as one graph (data-dependent control flow under fullgraph) runs
    eagerly with the same result, after one warning that names the error."""
    torch._dynamo.reset()

    def step(x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum().item() > 0 else x - 1

    compiled = nets.maybe_compile(step, True)
    x = torch.ones(3)
    assert torch.equal(compiled(x), x * 2) and torch.equal(compiled(-x), -x - 1)
    err = capsys.readouterr().err
    assert err.count("warning: torch.compile failed") == 1 and "step runs eagerly" in err
    assert err.split("torch.compile failed (")[1].split(")")[0].count(":") >= 1  # error type and its message
