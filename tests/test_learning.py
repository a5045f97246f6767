"""Slow learning checks (run with ``pytest -m slow``): each algorithm reaches the expert on CartPole with
the budget of its config file. The short learning checks that run in CI are in tests/test_<algo>.py."""

from __future__ import annotations

import pytest
from learning_checks import beats_random, run_script


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["gail", "airl", "drlhp", "iqlearn"])
def test_reaches_the_expert_on_cartpole_with_its_config(tmp_path, algo):
    """Slow (run with ``pytest -m slow``; 0.5-7 min each, 12 min in all): with the budget of
    configs/<algo>/CartPole-v1.yaml the policy scores >= 0.9 normalized on held-out episodes."""
    run = run_script(tmp_path, f"cleanil/{algo}.py", "--env", "CartPole")
    beats_random(run, "CartPole-v1", margin=0.9)
