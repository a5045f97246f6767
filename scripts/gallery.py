"""Render what was learned: an animated clip of each shipped expert and of each algorithm's benchmark policy,
per env, into benchmark_results/gallery/ (animated WebP images, which browsers and GitHub play inline), with a
page (README.md) that shows them side by side, and clips.json saying where each policy came from.

- Experts: cleanil/experts/<EnvId>.pt. Benchmark policies: the ``model.pt`` that scripts/benchmark.py's runs
  leave in ``<run-root>/<algo>/<EnvId>__seed<k>/run/`` (the lowest seed present); an algorithm with no such
  run on this machine gets an empty cell that says how to make one.
- Each clip is one deterministic episode on a reset seed used neither by demos nor by evaluation during
  training: its first ``--frames`` x ``--every`` env steps, every ``--every``-th frame, ``--size`` pixels
  square. Its caption gives the return of the whole episode (computed without rendering) and the normalized
  return. MuJoCo renders offscreen (EGL on a headless machine, about 10-20 frames/s on one CPU core).
- The committed clips are kept small (a few MB in all): the defaults give ~100-300 KB a clip.

Run: python scripts/gallery.py                        (every env that has an expert; a few minutes a clip)
     python scripts/gallery.py --envs Hopper --algos gail iqlearn
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from cleanil import envs, runs

GALLERY_SEED = 4_000_000  # reset seed of every clip: apart from demo, evaluation and expert-scoring seeds
NAMES = {"bc": "BC", "dagger": "DAgger", "gail": "GAIL", "airl": "AIRL", "iqlearn": "IQ-Learn", "sqil": "SQIL",
         "density": "Density", "drlhp": "DRLHP", "mce_irl": "MCE IRL"}  # fmt: skip


@dataclass
class Args:
    envs: tuple[str, ...] = ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Swimmer", "Humanoid")
    """environments (aliases or gymnasium ids); those without an expert are skipped with a note"""
    algos: tuple[str, ...] = ("bc", "dagger", "gail", "airl", "iqlearn", "sqil", "density", "drlhp")
    """algorithms whose benchmark policies are shown beside the expert"""
    run_root: str = "runs/benchmark"
    """where scripts/benchmark.py keeps its runs (its --run-root)"""
    out_dir: str = "benchmark_results/gallery"
    """folder for the clips, README.md and clips.json"""
    frames: int = 100
    """frames per clip"""
    every: int = 3
    """keep every this many env steps as a frame (the clip plays at the env's own speed)"""
    size: int = 144
    """clip width and height in pixels"""
    quality: int = 40
    """WebP quality, 0-100"""
    page_only: bool = False
    """rewrite README.md from the clips.json already in --out-dir, rendering nothing"""


def benchmark_policy(run_root: Path, algo: str, env_id: str) -> Path | None:
    """``model.pt`` of the lowest-seed benchmark run of ``algo`` on ``env_id``, if one finished here."""
    found = []
    for model in (run_root / algo).glob(f"{env_id}__seed*/run/model.pt"):
        seed = model.parent.parent.name.rsplit("__seed", 1)[1]
        if seed.isdigit():
            found.append((int(seed), model))
    return min(found)[1] if found else None


def render_clip(policy, env_id: str, args: Args, path: Path) -> dict:
    """Write one episode's clip to ``path``; its whole return, from the same reset seed without rendering."""
    frames, _, fps = envs.render_episode(policy, env_id, GALLERY_SEED, args.frames * args.every, args.size)
    kept = [Image.fromarray(f).resize((args.size, args.size), Image.BILINEAR) for f in frames[:: args.every]]
    kept = kept[: args.frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    kept[0].save(path, save_all=True, append_images=kept[1:], duration=round(1000 * args.every / fps), loop=0,
                 quality=args.quality, method=4)  # fmt: skip
    episode = envs.rollout(policy, env_id, 1, GALLERY_SEED)
    ret = float(episode["returns"][0])
    return {"return": ret, "normalized_return": envs.normalized_score(ret, env_id), "frames": len(kept),
            "episode_length": int(episode["lengths"][0]), "bytes": path.stat().st_size}  # fmt: skip


def caption(clip: dict) -> str:
    norm = clip["normalized_return"]
    return f"{clip['return']:.0f}" + ("" if norm is None else f" ({norm:.2f})")


def page(rows: dict, args: Args) -> str:
    """The gallery page: one row per env, the expert then each algorithm."""
    columns = ["expert", *args.algos]
    lines = [
        "# Gallery: what was learned",
        "",
        "Written by `python scripts/gallery.py` (see its docstring). One deterministic episode per cell, on a reset",
        f"seed used for nothing else ({GALLERY_SEED}); the caption is the whole episode's return (normalized",
        "return in brackets: 0 is the random policy, 1 the expert). Benchmark policies are those of the lowest",
        "seed that `scripts/benchmark.py` trained on the machine that wrote this page; `clips.json` names each",
        "policy's run, seed and git revision. A dash is a policy not trained on that machine:",
        "`python scripts/benchmark.py --algos <algo> --envs <env> --seeds 1` trains it (add `--force` where its record",
        "exists already), and `python scripts/gallery.py` draws it.",
        "",
        "| env | " + " | ".join("expert" if c == "expert" else NAMES.get(c, c) for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for env_id, clips in rows.items():
        cells = []
        for c in columns:
            clip = clips.get(c)
            if clip is None:
                cells.append("-")
            else:
                cells.append(f"![{c} on {env_id}]({clip['file']})<br>{caption(clip)}")
        lines.append(f"| {env_id} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(args: Args) -> dict:
    if args.frames < 1 or args.every < 1 or args.size < 16:
        raise envs.CleanILError("--frames and --every must be at least 1 and --size at least 16")
    out, run_root = Path(args.out_dir), Path(args.run_root)
    if args.page_only:
        if not (out / "clips.json").is_file():
            raise envs.CleanILError(f"--page-only: no {out / 'clips.json'} to write the page from")
        rows = json.loads((out / "clips.json").read_text())
        (out / "README.md").write_text(page(rows, args))
        print(f"wrote {out / 'README.md'} from {out / 'clips.json'}")
        return rows
    envs.check_video_support()
    rows: dict = {}
    for name in args.envs:
        env_id = envs.resolve_env_id(name)
        if not envs.expert_paths(env_id)[1].exists():
            print(f"{env_id}: no expert, skipped")
            continue
        spec = envs.env_spec(env_id)
        sources = {"expert": envs.expert_paths(env_id)[0]}
        sources |= {a: p for a in args.algos if (p := benchmark_policy(run_root, a, env_id)) is not None}
        rows[env_id] = {}
        for who, policy_file in sources.items():
            policy = envs.numpy_policy(envs.load_policy(policy_file, spec), torch.device("cpu"))
            clip = render_clip(policy, env_id, args, out / f"{env_id}__{who}.webp")
            config = policy_file.parent / "config.json"
            meta = json.loads(config.read_text()) if who != "expert" and config.exists() else {}
            shown = policy_file.resolve()  # relative to the repository when it lies inside it
            shown = shown.relative_to(envs.REPO_ROOT) if shown.is_relative_to(envs.REPO_ROOT) else shown
            rows[env_id][who] = clip | {"file": f"{env_id}__{who}.webp", "policy": str(shown),
                                        "seed": meta.get("seed"), "git": meta.get("git")}  # fmt: skip
            print(f"{env_id} {who}: return {caption(clip)}, {clip['bytes'] / 1024:.0f} KB")
    if not rows:
        raise envs.CleanILError("no env given has an expert: nothing to show")
    (out / "README.md").write_text(page(rows, args))
    (out / "clips.json").write_text(json.dumps(rows, indent=1) + "\n")
    total = sum(c["bytes"] for clips in rows.values() for c in clips.values())
    print(f"wrote {out / 'README.md'}: {sum(map(len, rows.values()))} clips, {total / 1e6:.1f} MB")
    return rows


if __name__ == "__main__":
    runs.run_cli(main, Args, "gallery")
