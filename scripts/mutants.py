"""Planted mutations: does the test suite notice when an algorithm breaks?

Each mutation below changes one line of an algorithm file the way a real bug would (a sign flipped where a
loss or reward is called, labels swapped, a state left out of checkpoints). For each, this script copies the
repository's tracked files into a temporary directory, applies the mutation there (the working tree is never
touched), runs the tests named for it, and reports which test failed. A mutation that no test catches is
a hole in the suite; the script then exits 1. A mutation whose line is no longer in its file exits 2: edit
the list together with the code.

Run (on purpose, not in CI; about 15 minutes on 2 CPU cores):
    python scripts/mutants.py                  # every mutation
    python scripts/mutants.py --only gail_ppo_reward_sign dagger_newest_round_only
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    line: str  # the exact original text (one line, or a part of one), found exactly once in the file
    mutant: str  # what replaces it
    tests: tuple[str, ...]  # pytest node ids or files that must catch it


MUTATIONS = (
    Mutation("gail_ppo_reward_sign", "cleanil/gail.py",
             "reward = discriminator_reward(disc, d[: T * n], args.reward)",
             "reward = -discriminator_reward(disc, d[: T * n], args.reward)",
             ("tests/test_gail.py::test_ppo_generator_smoke", "tests/test_gail.py::test_gail_learns_cartpole")),
    Mutation("gail_reward_sign", "cleanil/gail.py",
             "return policy_reward(disc(disc_input(b[", "return -policy_reward(disc(disc_input(b[",
             ("tests/test_gail.py::test_discriminator_reward_is_the_chosen_form_of_the_logit",)),
    Mutation("airl_ppo_reward_sign", "cleanil/airl.py",
             "reward = airl_logit(f, weight * logp_t).view(T, n)",
             "reward = -airl_logit(f, weight * logp_t).view(T, n)",
             ("tests/test_gail.py::test_ppo_generator_smoke", "tests/test_airl.py::test_airl_learns_cartpole")),
    Mutation("gail_labels_swapped", "cleanil/gail.py",
             "loss = discriminator_loss(logit_e, logit_pi,", "loss = discriminator_loss(logit_pi, logit_e,",
             ("tests/test_gail.py::test_gail_learns_cartpole",)),
    Mutation("airl_labels_swapped", "cleanil/airl.py",
             "loss = discriminator_loss(logit_e, logit_pi,", "loss = discriminator_loss(logit_pi, logit_e,",
             ("tests/test_airl.py::test_airl_learns_cartpole",)),
    Mutation("airl_log_pi_sign", "cleanil/airl.py",
             "w * log_pi(actor, x[\"obs\"], x[\"act\"], discrete, floor)",
             "-w * log_pi(actor, x[\"obs\"], x[\"act\"], discrete, floor)",
             ("tests/test_airl.py::test_disc_logit_is_f_minus_weighted_log_pi",
              "tests/test_gail.py::test_ppo_generator_smoke")),
    Mutation("airl_ppo_log_pi_sign", "cleanil/airl.py",
             "reward = airl_logit(f, weight * logp_t).view(T, n)",
             "reward = airl_logit(f, -weight * logp_t).view(T, n)",
             ("tests/test_gail.py::test_ppo_generator_smoke",)),
    Mutation("gail_ppo_absorbing_value_zero", "cleanil/gail.py",
             "v_end = r_abs / (1 - gamma) if absorbing else torch.zeros_like(r_abs)",
             "v_end = torch.zeros_like(r_abs)",
             ("tests/test_gail.py::test_ppo_value_after_a_termination_is_the_absorbing_states",)),
    Mutation("airl_ppo_absorbing_value_zero", "cleanil/airl.py",
             "v_end = r_abs / (1 - gamma) if absorbing else torch.zeros_like(r_abs)",
             "v_end = torch.zeros_like(r_abs)",
             ("tests/test_gail.py::test_ppo_value_after_a_termination_is_the_absorbing_states",)),
    Mutation("iqlearn_regularize_all_inverted", "cleanil/iqlearn.py",
             "not args.offline) for q in q_values(", "args.offline) for q in q_values(",
             ("tests/test_iqlearn.py",)),
    Mutation("sqil_rewards_swapped", "cleanil/sqil.py",
             "< n_expert).float()", ">= n_expert).float()",
             ("tests/test_sqil.py::test_sqil_learns_cartpole",)),
    Mutation("sqil_absorbing_value_ignored", "cleanil/sqil.py",
             "return torch.where(b[\"next_flag\"].bool(), m.target.q_abs.min(0).values, v)", "return v",
             ("tests/test_sqil.py::test_next_value_of_the_absorbing_state_is_its_own_q",)),
    Mutation("density_reward_not_shifted", "cleanil/density.py",
             "return (self.log_density(x) - self.floor).clamp_min(0)", "return self.log_density(x).clamp_min(0)",
             ("tests/test_density.py::test_reward_is_shifted_by_the_floor_and_clipped_at_zero",
              "tests/test_density.py::test_density_learns_cartpole")),
    Mutation("density_ratio_sign", "cleanil/density.py",
             "return r if self.agent is None else r - self.agent.reward(x)",
             "return r if self.agent is None else r + self.agent.reward(x)",
             ("tests/test_density.py::test_ratio_subtracts_the_agents_density_refitted_on_schedule",)),
    Mutation("density_self_not_left_out", "cleanil/density.py",
             "logk[rows, start + rows] = -torch.inf", "pass",
             ("tests/test_density.py::test_log_density_matches_a_brute_force_kernel_sum",)),
    Mutation("dagger_newest_round_only", "cleanil/dagger.py",
             "obs_t = torch.cat([obs_t, new_obs])", "obs_t, labels = new_obs, labels[:0]",
             ("tests/test_dagger.py",)),
    Mutation("drlhp_pair_order_swapped", "cleanil/drlhp.py",
             "loss = loss + bradley_terry_loss(r1, r2, labels[\"mu\"][idx])",
             "loss = loss + bradley_terry_loss(r2, r1, labels[\"mu\"][idx])",
             ("tests/test_drlhp.py::test_drlhp_learns_cartpole",)),
    Mutation("gail_disc_not_checkpointed", "cleanil/gail.py",
             "state = {\"disc\": disc, \"disc_opt\": disc_opt}", "state = {\"disc_opt\": disc_opt}",
             ("tests/test_resume.py",)),
    Mutation("airl_reward_not_checkpointed", "cleanil/airl.py",
             "state = {\"reward\": reward_net, \"disc_opt\": disc_opt}", "state = {\"disc_opt\": disc_opt}",
             ("tests/test_resume.py",)),
    Mutation("drlhp_reward_not_checkpointed", "cleanil/drlhp.py",
             "objects | {\"reward\": reward, \"reward_opt\": reward_opt}", "objects | {\"reward_opt\": reward_opt}",
             ("tests/test_resume.py",)),
)  # fmt: skip


@dataclass
class Args:
    only: tuple[str, ...] = ()
    """names of the mutations to run (default: all)"""
    timeout: int = 900
    """seconds each mutation's tests may take"""
    keep: bool = False
    """keep the temporary copies (their paths are printed)"""


def copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\n")  # fmt: skip
    for name in filter(None, files):
        src, dst = REPO / name, dest / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())


def apply(root: Path, m: Mutation) -> None:
    path = root / m.file
    text = path.read_text()
    if text.count(m.line) != 1:
        print(f"error: mutation {m.name}: '{m.line}' occurs {text.count(m.line)} times in {m.file}", file=sys.stderr)
        sys.exit(2)
    path.write_text(text.replace(m.line, m.mutant))


def run_tests(root: Path, m: Mutation, timeout: int) -> tuple[bool, list[str], float]:
    """(caught, failing test ids, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *m.tests]
    start = time.time()
    try:
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True, [f"(tests ran past {timeout} s)"], time.time() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", res.stdout, flags=re.M)
    return (
        res.returncode != 0,
        failed or ([] if res.returncode == 0 else [res.stdout.strip()[-300:]]),
        time.time() - start,
    )


def main(args: Args) -> None:
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in MUTATIONS}
    if unknown:
        print(
            f"error: unknown mutation(s) {', '.join(sorted(unknown))}; known: {', '.join(m.name for m in MUTATIONS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    survivors = []
    print("| mutation | caught | failing test | seconds |\n|---|---|---|---:|")
    for m in chosen:
        root = Path(tempfile.mkdtemp(prefix=f"cleanil_mutant_{m.name}_"))
        copy_repo(root)
        apply(root, m)
        caught, failed, seconds = run_tests(root, m, args.timeout)
        print(f"| {m.name} | {'yes' if caught else 'NO'} | {'; '.join(failed) or '-'} | {seconds:.0f} |", flush=True)
        survivors += [] if caught else [m.name]
        if args.keep:
            print(f"  copy kept in {root}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    if survivors:
        print(f"{len(survivors)} mutation(s) not caught: {', '.join(survivors)}", file=sys.stderr)
        sys.exit(1)
    print(f"all {len(chosen)} mutation(s) caught")


if __name__ == "__main__":
    main(tyro.cli(Args))
