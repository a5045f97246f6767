"""Turn the benchmark records into benchmark_results/README.md (tables) and learning-curve PNGs.

Reads every record that scripts/benchmark.py wrote under benchmark_results/records/<variant>/, where
a variant is an algorithm or ``<algo>__<tag>``. For each (variant, env) it reports over seeds: the
final normalized return (mean +- std), the area under the normalized learning curve (the curve's
mean over training, trapezoidal in steps), the best, the step by which every seed has reached 0.9
normalized at least once, the budget (env steps, or gradient updates for algorithms without env
interaction), demos, wall-clock and env steps/s. One PNG per env draws the
normalized return against steps, one line per variant (mean over seeds, shaded min to max).

Interval estimates (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice", NeurIPS), computed with their library rliable: the interquartile mean (IQM) of the final and
of the AUC normalized return with a 95% stratified bootstrap interval (seeds resampled within each env),
per algorithm and env, and aggregated over the four MuJoCo envs; the probability that one algorithm's
final normalized return beats another's on a MuJoCo env drawn at random, with its interval; and two PNGs,
intervals.png (the aggregate IQMs) and profiles.png (performance profiles: the share of runs above each
normalized score). The bootstrap's seed is fixed, so the tables reproduce byte for byte.

Nothing here is computed from anything but the records, and the output is deterministic: running it
on the committed records reproduces the committed README byte for byte.

Run: python scripts/plot.py
"""

from __future__ import annotations

import functools
import json
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from cleanil import envs, runs

REACH = 0.9  # the "reaches" column: the step by which every seed's normalized return has been >= this
BOOTSTRAP_REPS, BOOTSTRAP_SEED = 2000, 0  # stratified bootstrap resamples per interval, and their fixed seed
MUJOCO_ENVS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5")
COMPARED = ("gail", "airl", "iqlearn", "sqil", "bc", "dagger")  # the probability-of-improvement pairs, in order


@dataclass
class Args:
    records: str = "benchmark_results/records"
    """folder of records written by scripts/benchmark.py"""
    out_dir: str = "benchmark_results"
    """where README.md and curves/<EnvId>.png are written"""
    plots: bool = True
    """draw the PNG learning curves (--no-plots writes the tables only)"""
    readme: str | None = "README.md"
    """file whose results markers get the headline table (None: leave it alone)"""


def load_records(root: Path) -> dict[tuple[str, str], list[dict]]:
    """(variant, env) -> records sorted by seed."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for path in sorted(root.glob("*/*.json")):
        try:
            rec = json.loads(path.read_text())
            groups[(path.parent.name, rec["env"])].append(rec)
        except (json.JSONDecodeError, KeyError) as e:
            raise envs.CleanILError(f"benchmark record {path} is unreadable ({e})") from None
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in sorted(groups.items())}


def x_of(rec: dict) -> tuple[np.ndarray, str]:
    """The curve's x values: env steps if the run interacted with the env, else its own steps."""
    if rec["env_steps"] > 0:
        return np.array([c["env_steps"] for c in rec["curve"]], float), "env steps"
    return np.array([c["step"] for c in rec["curve"]], float), "updates"


def auc(rec: dict) -> float | None:
    """Mean normalized return over training: trapezoidal area under the curve / its step range."""
    x, _ = x_of(rec)
    y = np.array([c["normalized_return"] for c in rec["curve"]], dtype=float)
    if np.isnan(y).any() or len(y) == 0:
        return None
    if len(y) == 1 or x[-1] == x[0]:
        return float(y[-1])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def first_reach(rec: dict, level: float) -> float | None:
    """The first step of the curve (env steps, or updates) at which the normalized return is >= level."""
    x, _ = x_of(rec)
    ys = [c["normalized_return"] for c in rec["curve"]]
    hits = [xi for xi, y in zip(x, ys, strict=True) if y is not None and y >= level]
    return hits[0] if hits else None


def all_reach(recs: list[dict], level: float = REACH) -> str:
    """The step by which every seed has reached ``level`` at least once; "k/n seeds" if some never did."""
    steps = [first_reach(r, level) for r in recs]
    if any(s is None for s in steps):
        return f"{sum(s is not None for s in steps)}/{len(steps)} seeds"
    return f"{max(steps):,.0f}"


def mean_std(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{np.mean(vals):.3f} +- {np.std(vals):.3f}"


# ------------------------------------------------------------------------- interval estimates (rliable)
def rliable() -> tuple:
    try:
        from rliable import library, metrics
    except ImportError:
        raise envs.CleanILError("scripts/plot.py needs rliable for its interval estimates: "
                                "pip install -e '.[plots]'") from None  # fmt: skip
    return library, metrics


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean over all runs and envs (rliable's metrics.aggregate_iqm)."""
    return float(rliable()[1].aggregate_iqm(scores))


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) averaged over envs: per env, the share of run pairs (x_i, y_j) with x_i > y_j, ties counting
    half (Mann-Whitney's U / (n_x n_y)). rliable's metrics.probability_of_improvement, vectorized: its
    scipy call per env and resample would make the bootstrap take minutes."""
    pairs_gt, pairs_eq = x[:, None, :] > y[None, :, :], x[:, None, :] == y[None, :, :]
    return float((pairs_gt.mean((0, 1)) + 0.5 * pairs_eq.mean((0, 1))).mean())


@functools.cache
def _interval(func: Callable, *scores: tuple) -> tuple[float, float, float]:
    library, _ = rliable()
    arrays = [np.array(x) for x in scores]
    state = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)  # rliable's resampling draws from numpy's global generator, not random_state
    with warnings.catch_warnings():  # arch's notice that it will take a numpy Generator instead of a RandomState
        warnings.simplefilter("ignore", FutureWarning)
        point, ci = library.get_interval_estimates({"x": arrays[0] if len(arrays) == 1 else arrays},
                                                   lambda *s: np.array([func(*s)]), reps=BOOTSTRAP_REPS)  # fmt: skip
    np.random.set_state(state)
    return float(point["x"][0]), float(ci["x"][0, 0]), float(ci["x"][1, 0])


def interval(func: Callable, *scores: np.ndarray) -> tuple[float, float, float]:
    """Point estimate and 95% stratified bootstrap interval (rliable) of ``iqm`` on one (runs, envs) array or
    ``probability_of_improvement`` on two, runs resampled within each env (remembered: the tables and the
    plots ask for the same ones)."""
    return _interval(func, *(tuple(map(tuple, s)) for s in scores))


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """The IQM over one env's seeds and its 95% percentile bootstrap interval: the stratified bootstrap with a
    single stratum, by scipy's vectorized bootstrap (rliable's loop would take minutes over every row)."""
    from scipy import stats

    x = np.array(values, float)
    iqm = partial(stats.trim_mean, proportiontocut=0.25)
    if len(x) < 2 or np.ptp(x) == 0:
        return float(iqm(x)), float(x.min()), float(x.max())
    res = stats.bootstrap((x,), iqm, vectorized=True, n_resamples=BOOTSTRAP_REPS, method="percentile",
                          rng=np.random.default_rng(BOOTSTRAP_SEED))  # fmt: skip
    return float(iqm(x)), float(res.confidence_interval.low), float(res.confidence_interval.high)


def fmt_interval(est: tuple[float, float, float]) -> str:
    return f"{est[0]:.3f} [{est[1]:.3f}, {est[2]:.3f}]"


def final_and_auc(recs: list[dict]) -> tuple[list, list]:
    return [r["final_normalized_return"] for r in recs], [auc(r) for r in recs]


def interval_table(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Per (variant, env): the IQM over seeds of the final and the AUC normalized return, with intervals."""
    lines = ["| algorithm | env | seeds | final normalized IQM [95% CI] | AUC normalized IQM [95% CI] |",
             "|---|---|---|---|---|"]  # fmt: skip
    for (variant, env), recs in by_env(groups):
        final, area = final_and_auc(recs)
        if any(v is None for v in final + area):
            continue
        cells = [fmt_interval(seed_interval(v)) for v in (final, area)]
        lines.append(f"| {variant} | {env} | {','.join(str(r['seed']) for r in recs)} | {cells[0]} | {cells[1]} |")
    return lines


def mujoco_scores(groups: dict[tuple[str, str], list[dict]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Algorithm (no tagged variants) -> (final, AUC) normalized returns shaped (seeds, MuJoCo envs), for those
    with records on all four envs; the seeds every env has."""
    out = {}
    for algo in sorted({v for v, _ in groups if "__" not in v}):
        recs = [groups.get((algo, env), []) for env in MUJOCO_ENVS]
        seeds = sorted(set.intersection(*[{r["seed"] for r in rs} for rs in recs]))
        if seeds:
            rows = [[next(r for r in rs if r["seed"] == s) for rs in recs] for s in seeds]
            out[algo] = tuple(np.array([[f(r) for r in row] for row in rows], float)
                              for f in (lambda r: r["final_normalized_return"], auc))  # fmt: skip
    return out


def aggregate_table(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    lines = ["| algorithm | seeds per env | final normalized IQM [95% CI] | AUC normalized IQM [95% CI] |",
             "|---|---|---|---|"]  # fmt: skip
    for algo, (final, area) in scores.items():
        cells = [fmt_interval(interval(iqm, s)) for s in (final, area)]
        lines.append(f"| {algo} | {len(final)} | {cells[0]} | {cells[1]} |")
    return lines


def improvement_table(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """P(X > Y): the probability that X's final normalized return beats Y's on a MuJoCo env drawn at random
    (Mann-Whitney per env, averaged over envs), on the seeds both have."""
    algos = [a for a in COMPARED if a in scores]
    lines = ["| X | Y | P(X > Y) [95% CI] |", "|---|---|---|"]
    for i, x in enumerate(algos):
        for y in algos[i + 1 :]:
            n = min(len(scores[x][0]), len(scores[y][0]))
            est = interval(probability_of_improvement, scores[x][0][:n], scores[y][0][:n])
            lines.append(f"| {x} | {y} | {fmt_interval(est)} |")
    return lines if len(lines) > 2 else []


def plot_aggregates(scores: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> None:
    """intervals.png (aggregate IQMs with their intervals) and profiles.png (performance profiles), MuJoCo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    colors = {a: plt.get_cmap("tab10")(i) for i, a in enumerate(scores)}
    point = {a: np.array([interval(iqm, s)[0] for s in v]) for a, v in scores.items()}
    ci = {a: np.array([interval(iqm, s)[1:] for s in v]).T for a, v in scores.items()}
    fig, _ = plot_utils.plot_interval_estimates(point, ci, ["final IQM", "AUC IQM"], algorithms=list(scores),
                                                colors=colors, xlabel="normalized return (MuJoCo)",
                                                xlabel_y_coordinate=-0.3, row_height=0.5)  # fmt: skip
    fig.savefig(out / "intervals.png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    library, _ = rliable()
    taus = np.linspace(0, 1.2, 61)
    np.random.seed(BOOTSTRAP_SEED)  # create_performance_profile draws from numpy's global generator
    profiles, profile_cis = library.create_performance_profile({a: v[0] for a, v in scores.items()}, taus)
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=profile_cis, ax=ax, colors=colors,
                                         xlabel="final normalized return (tau)")  # fmt: skip
    ax.legend([plt.Line2D([0], [0], color=colors[a], lw=2) for a in scores], list(scores), fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "profiles.png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def by_env(groups: dict[tuple[str, str], list[dict]]) -> list[tuple[tuple[str, str], list[dict]]]:
    """The groups in table order: by env, then by variant."""
    return sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))


def table(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    lines = [
        "| algorithm | env | seeds | demos | budget | final normalized | AUC normalized | best | all seeds >= 0.9 by "
        "| wall-clock | env steps/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (variant, env), recs in by_env(groups):
        _, unit = x_of(recs[0])
        budget = max(r["env_steps"] if unit == "env steps" else r["steps"] for r in recs)
        wall = float(np.mean([r["wall_clock_s"] for r in recs]))
        rate = f"{np.mean([r['env_steps'] / r['wall_clock_s'] for r in recs]):.0f}" if unit == "env steps" else "-"
        demos = sorted({"-" if r.get("num_demos") is None else str(r["num_demos"]) for r in recs})  # - : none used
        lines.append(
            f"| {variant} | {env} | {','.join(str(r['seed']) for r in recs)} | {'/'.join(demos)} "
            f"| {budget:,} {unit} | {mean_std([r['final_normalized_return'] for r in recs])} "
            f"| {mean_std([auc(r) for r in recs])} | {mean_std([r['best_normalized_return'] for r in recs])} "
            f"| {all_reach(recs)} | {wall:.0f} s | {rate} |"
        )
    return lines


def headline(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Env x algorithm table of final normalized return (default settings only, no tagged variants)."""
    algos = sorted({v for v, _ in groups if "__" not in v})
    env_ids = sorted({e for v, e in groups if "__" not in v})
    lines = ["| env | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    for env in env_ids:
        cells = []
        for algo in algos:
            recs = groups.get((algo, env))
            cells.append(mean_std([r["final_normalized_return"] for r in recs]) if recs else "")
        lines.append(f"| {env} | " + " | ".join(cells) + " |")
    return lines


def reward_table(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Correlations of recovered rewards with the true reward (reward/* metrics of the last evaluation)."""
    evals = [r.get("final_eval", {}) for recs in groups.values() for r in recs]
    keys = sorted({k for ev in evals for k in ev if k.startswith("reward/")})
    rows = [(v, e, recs) for (v, e), recs in by_env(groups)
            if any(k in r.get("final_eval", {}) for r in recs for k in keys)]  # fmt: skip
    if not rows:
        return []
    lines = ["| algorithm | env | seeds | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for variant, env, recs in rows:
        seeds = ",".join(str(r["seed"]) for r in recs if any(k in r.get("final_eval", {}) for k in keys))
        cells = [mean_std([r.get("final_eval", {}).get(k) for r in recs]) for k in keys]
        lines.append(f"| {variant} | {env} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def sac_table(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Final return of each variant against SAC on the env's true reward (the ``sac`` records) at the same
    env-step budget: the ratio of the mean final returns."""
    lines = ["| algorithm | env | seeds | final return | SAC seeds | SAC final return | ratio |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (variant, env), recs in by_env(groups):
        ref = groups.get(("sac", env))
        if variant == "sac" or not ref or recs[0]["env_steps"] == 0:
            continue
        if max(r["env_steps"] for r in recs) != max(r["env_steps"] for r in ref):
            continue
        ret, ref_ret = [r["final_return"] for r in recs], [r["final_return"] for r in ref]
        lines.append(
            f"| {variant} | {env} | {','.join(str(r['seed']) for r in recs)} | {np.mean(ret):.1f} +- {np.std(ret):.1f} "
            f"| {','.join(str(r['seed']) for r in ref)} | {np.mean(ref_ret):.1f} +- {np.std(ref_ret):.1f} "
            f"| {np.mean(ret) / np.mean(ref_ret):.3f} |"
        )
    return lines if len(lines) > 2 else []


def write_between_markers(path: Path, lines: list[str]) -> None:
    """Replace the text between the results markers of ``path`` (the top-level README) with ``lines``."""
    text = path.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        raise envs.CleanILError(f"{path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + rest.split(end, 1)[1])


def has_queries(recs: list[dict]) -> bool:
    return all("queries" in c for r in recs for c in r["curve"])


def plot_env(env: str, groups: dict[tuple[str, str], list[dict]], path: Path, by_queries: bool = False) -> None:
    """Normalized return against steps (or, with ``by_queries``, against preference labels asked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (variant, e), recs in sorted(groups.items()):
        if e != env or any(c["normalized_return"] is None for r in recs for c in r["curve"]):
            continue
        if by_queries and not has_queries(recs):
            continue
        xs = [np.array([c["queries"] for c in r["curve"]], float) if by_queries else x_of(r)[0] for r in recs]
        unit = "queries" if by_queries else x_of(recs[0])[1]
        grid = np.unique(np.concatenate(xs))
        ys = [np.interp(grid, x, [c["normalized_return"] for c in r["curve"]]) for x, r in zip(xs, recs, strict=True)]
        ys = np.array(ys)
        (line,) = ax.plot(grid, ys.mean(0), label=f"{variant} ({len(recs)} seeds, x = {unit})")
        ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set(title=env, xlabel="preference queries" if by_queries else "steps", ylabel="normalized return")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(args: Args) -> None:
    root, out = envs.REPO_ROOT / args.records, envs.REPO_ROOT / args.out_dir
    groups = load_records(root)
    if not groups:
        raise envs.CleanILError(f"no benchmark records under {root}")
    env_ids = sorted({env for _, env in groups})
    query_envs = sorted({env for (_, env), recs in groups.items() if has_queries(recs)})
    rewards, against_sac = reward_table(groups), sac_table(groups)
    scores = mujoco_scores(groups)
    aggregate, improvement = aggregate_table(scores), improvement_table(scores)
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python scripts/plot.py` from the records in `records/`, each written by",
        "`scripts/benchmark.py` with its command, seed, git revision, library versions and machine.",
        "Normalized return = (return - random) / (expert - random) with the shipped expert's metadata;",
        "final = the last evaluation; AUC = the mean normalized return over training (trapezoidal in",
        "steps); all seeds >= 0.9 by = the evaluation step by which every seed has scored >= 0.9",
        "normalized at least once (k/n seeds: only k ever did; a policy may fall back below it later).",
        "Budgets are env steps, or gradient updates for runs without env interaction. Seeds start at 1",
        "(seed 0 is the development seed). mean +- std over seeds.",
        "",
        *table(groups),
        "",
        *(
            [
                "## Recovered rewards",
                "",
                "Pearson correlation of a learned reward with the env's true reward at the end of training:",
                "reward/pearson_heldout per transition on held-out expert transitions; reward/pearson_episodes",
                "between the recovered and the true returns of episodes of the final policy.",
                "",
                *rewards,
                "",
            ]
            if rewards
            else []
        ),
        *(
            [
                "## Against SAC on the true reward",
                "",
                "Final return (mean +- std over seeds) against SAC trained on the env's true reward for the same",
                "env steps (`python scripts/benchmark.py --algos sac`); ratio = the ratio of the two means.",
                "",
                *against_sac,
                "",
            ]
            if against_sac
            else []
        ),
        "## Interval estimates",
        "",
        "Interquartile mean (IQM) over seeds with a 95% stratified bootstrap interval (rliable, "
        f"{BOOTSTRAP_REPS} resamples, seed {BOOTSTRAP_SEED}),",
        "of the final and of the AUC normalized return. With 3 to 5 seeds an interval is wide: it says how",
        "little a few seeds pin down.",
        "",
        *interval_table(groups),
        "",
        *(
            [
                "### Aggregated over the MuJoCo envs",
                "",
                "IQM over all runs on HalfCheetah, Hopper, Walker2d and Ant together (seeds resampled within",
                "each env), for the algorithms with records on all four.",
                "",
                *aggregate,
                "",
                "![aggregate IQMs](intervals.png)",
                "",
                "![performance profiles](profiles.png)",
                "",
            ]
            if scores
            else []
        ),
        *(
            [
                "### Probability of improvement",
                "",
                "P(X > Y): the probability that X's final normalized return beats Y's on a MuJoCo env drawn",
                "at random (Mann-Whitney per env, averaged), with a 95% stratified bootstrap interval.",
                "",
                *improvement,
                "",
            ]
            if improvement
            else []
        ),
        "## Learning curves",
        "",
        *[f"![{env}](curves/{env}.png)" for env in env_ids],
        "",
        *(
            [
                "## Return against preference queries",
                "",
                *[f"![{env}](curves/{env}__queries.png)" for env in query_envs],
                "",
            ]
            if query_envs
            else []
        ),
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text("\n".join(lines))
    print(f"wrote {out / 'README.md'} ({len(groups)} algorithm x env rows)")
    if args.readme:
        write_between_markers(envs.REPO_ROOT / args.readme, headline(groups))
        print(f"updated the results table in {args.readme}")
    if args.plots:
        for env in env_ids:
            plot_env(env, groups, out / "curves" / f"{env}.png")
        for env in query_envs:
            plot_env(env, groups, out / "curves" / f"{env}__queries.png", by_queries=True)
        print(f"wrote {len(env_ids) + len(query_envs)} plots under {out / 'curves'}")
        if scores:
            plot_aggregates(scores, out)
            print(f"wrote {out / 'intervals.png'} and {out / 'profiles.png'}")


if __name__ == "__main__":
    runs.run_cli(main, Args, "plot")
