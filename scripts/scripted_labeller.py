"""Answer a drlhp run's labelling page over HTTP as the synthetic oracle would (temperature 0): the fragment with
the higher true return is better, equal returns are equal. It reads each round's true returns from the run's
queries/round_<r>.npz and posts every answer through the page's endpoints, so a run labelled this way
exercises the whole web path (server, token, labels.jsonl, resume) without a person or a browser.

The run writes the page's address, token included, to runs/<run>/labelling.json (readable by its owner only);
this script waits for that file, answers until the run ends, and prints how many pairs it answered.

Run: python cleanil/drlhp.py --env Pendulum --gatherer web --run-name web &
     python scripts/scripted_labeller.py --run runs/web
(scripts/benchmark.py starts it beside each run with --companion, e.g. --tag web --extra="--gatherer web"
 --companion="python scripts/scripted_labeller.py --run {run}")
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro


@dataclass
class Args:
    run: str
    """the drlhp run's directory (runs/<name>), where it writes labelling.json and queries/"""
    wait: float = 600.0
    """seconds to wait for the run to start its page before giving up"""
    poll: float = 0.05
    """seconds between looks at the page while the agent trains"""


def request(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def true_returns(run: Path, round_: int, pair: str) -> tuple[float, float]:
    with np.load(run / "queries" / f"round_{round_:04d}.npz") as q:
        k = list(q["pair_ids"]).index(pair)
        return float(q["r1"][k]), float(q["r2"][k])


def main(args: Args) -> int:
    run, deadline = Path(args.run), time.time() + args.wait
    while not (run / "labelling.json").exists():
        if time.time() > deadline:
            raise SystemExit(f"error: {run}/labelling.json did not appear within {args.wait:.0f} s")
        time.sleep(0.2)
    answered, connected, page = 0, False, {}
    while True:
        page = page if connected else json.loads((run / "labelling.json").read_text())
        base, token = page["url"].split("/?")[0], page["token"]
        try:
            _, state = request(f"{base}/api/state?token={token}")
            connected = True
        except (urllib.error.URLError, ConnectionError):
            if connected or time.time() > deadline:
                break  # the run has ended and its server with it
            time.sleep(0.2)  # a file left by an earlier server: the run rewrites it when its page starts
            continue
        if state["status"] == "done":
            break
        if state["status"] != "labelling" or state["pair"] is None:
            time.sleep(args.poll)
            continue
        r1, r2 = true_returns(run, state["round"], state["pair"])
        answer = "left" if r1 > r2 else "right" if r2 > r1 else "equal"
        status, reply = request(f"{base}/api/answer", {"token": token, "pair": state["pair"], "answer": answer})
        if status != 200:
            raise SystemExit(f"error: the page refused an answer: {reply.get('error')}")
        answered += 1
    print(f"answered {answered} pairs of {run}")
    return answered


if __name__ == "__main__":
    main(tyro.cli(Args))
