"""A person's preferences through a local web page: the server behind drlhp.py's ``--gatherer web``.

- ``WebGatherer`` is a gatherer (a list of fragment pairs -> one preference per pair: 1 left better, 0 right
  better, 0.5 equal, NaN cannot tell). Each call is a round: the page shows the round's pairs one at a time and
  the call returns when every pair is answered. Answers a person gave before (``labels.jsonl``, read at start)
  are returned without asking again, so a run resumed in the middle of a round shows only the pairs left.
- Clips: each fragment carries the simulator state of each of its steps (``envs.sim_state``); a worker thread,
  owning one render env, draws the round's fragments in order (``envs.render_state``) into looping animated
  WebP images, which every current browser plays. The page preloads the next pair while the person looks at
  this one.
- Safe by default: the server listens on 127.0.0.1 (``--host`` to change), every request needs the run's random
  token (in the printed URL), answers for unknown or already answered pairs are refused with a message, and
  ``close`` stops the server with the run.
- Nothing lost: every answer is one line appended to ``runs/<run>/labels.jsonl`` with a single write and an
  fsync; the fragments of each round go to ``runs/<run>/queries/round_<r>.npz`` (observations, actions, true
  rewards), so ``load_labelled_pairs`` can train a later run on a person's labels (``--labels-from``).
- HTTP from the standard library (``http.server``): the page needs four endpoints and no dependency.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np

from cleanil import envs

PAGE = Path(__file__).with_name("labelling.html")


class Stopped(Exception):
    """The run was asked to stop (Ctrl-C, SIGTERM) while the page waited for answers."""


ANSWERS = {"left": 1.0, "right": 0.0, "equal": 0.5, "skip": float("nan")}  # skip: cannot tell, not trained on


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line with a single write, flushed to disk: a crash leaves whole lines only."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_labels(path: Path) -> dict[str, dict]:
    """Pair id -> its answer record, from a labels.jsonl (the last answer wins; a torn last line is ignored)."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[record["pair"]] = record
    return out


def load_labelled_pairs(path: str | Path) -> dict[str, np.ndarray]:
    """The pairs a person answered (skips left out), for ``--labels-from``: o1, a1, o2, a2 [N, L, ...] (each
    observation followed by the absorbing-state flag, 1 on the padding after an episode's end), mu [N] and the
    fragments' true returns r1, r2 [N], read from labels.jsonl and the queries/ folder beside it."""
    path = Path(path)
    if not path.is_file():
        raise envs.CleanILError(f"--labels-from {path}: no such file")
    labels = {k: v for k, v in read_labels(path).items() if v.get("mu") is not None}
    rows: dict[str, list] = {k: [] for k in ("o1", "a1", "o2", "a2", "r1", "r2", "mu")}
    for round_file in sorted((path.parent / "queries").glob("round_*.npz")):
        with np.load(round_file) as q:
            for k, pair in enumerate(q["pair_ids"]):
                if str(pair) in labels:
                    for key in ("a1", "a2", "r1", "r2"):
                        rows[key].append(q[key][k])
                    for side in "12":
                        flag = 1.0 - q[f"alive{side}"][k][:, None]
                        rows[f"o{side}"].append(np.concatenate([q[f"o{side}"][k], flag], -1).astype(np.float32))
                    rows["mu"].append(labels[str(pair)]["mu"])
    if not rows["mu"]:
        raise envs.CleanILError(f"--labels-from {path}: no answered pair whose fragments are in {path.parent}/queries")
    return {k: np.stack(v) if k[0] in "oa" else np.array(v, dtype=np.float32) for k, v in rows.items()}


class WebGatherer:
    """Serves the labelling page and blocks each call until a person has answered the round (see module doc)."""

    def __init__(self, run_dir: Path, env_id: str, host: str = "127.0.0.1", port: int = 0, size: int = 240,
                 should_stop: Callable[[], bool] = lambda: False):  # fmt: skip
        self.run_dir, self.env_id, self.size, self.should_stop = Path(run_dir), env_id, size, should_stop
        self.labels_path = self.run_dir / "labels.jsonl"
        self.answers = read_labels(self.labels_path)
        self.token = secrets.token_urlsafe(16)
        self.lock = threading.Condition()
        self.round, self.pairs, self.status = -1, [], "training"  # the round on the page and its pair ids
        self.clips: dict[str, bytes] = {}
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"http://{shown}:{self.server.server_address[1]}/?token={self.token}"
        self.address_file = self.run_dir / "labelling.json"  # for a scripted labeller; its owner alone reads it
        fd = os.open(self.address_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": self.url, "token": self.token}, f)
        print(f"labelling page: {self.url}  (open it in a browser; answers go to {self.labels_path})", flush=True)

    # ---- the gatherer
    def __call__(self, pairs: list[tuple[dict, dict]]) -> np.ndarray:
        ids = [a["id"].rsplit("-", 1)[0] for a, _ in pairs]
        self._save_round(pairs, ids)
        with self.lock:
            self.round, self.pairs, self.status = int(ids[0].split("-")[0]), ids, "labelling"
            self.lock.notify_all()
        worker = threading.Thread(target=self._render, args=(pairs,), daemon=True)
        worker.start()
        with self.lock:
            while any(pair not in self.answers for pair in ids):
                if self.should_stop():
                    self.status = "stopped"
                    raise Stopped
                self.lock.wait(timeout=0.2)
            self.status = "training"
            answers = [self.answers[pair]["mu"] for pair in ids]
        worker.join()
        return np.array([np.nan if mu is None else mu for mu in answers], dtype=float)

    def close(self) -> None:
        with self.lock:
            self.status = "done"
        self.server.shutdown()
        self.server.server_close()
        self.address_file.unlink(missing_ok=True)

    def _save_round(self, pairs: list[tuple[dict, dict]], ids: list[str]) -> None:
        """The round's fragments, for --labels-from (written once: a resumed round keeps its file)."""
        path = self.run_dir / "queries" / f"round_{int(ids[0].split('-')[0]):04d}.npz"
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        arrays = {"pair_ids": np.array(ids)}
        for side, k in ((0, "1"), (1, "2")):
            arrays[f"o{k}"] = np.stack([p[side]["obs"] for p in pairs])
            arrays[f"a{k}"] = np.stack([p[side]["actions"] for p in pairs])
            arrays[f"r{k}"] = np.array([p[side]["true_rewards"].sum() for p in pairs])
            arrays[f"alive{k}"] = np.stack([p[side]["alive"] for p in pairs])
        envs.save_demo_file(path, arrays)

    def _render(self, pairs: list[tuple[dict, dict]]) -> None:
        """Draw the unanswered pairs' clips in page order, one env for all (rendering is not thread-safe)."""
        from PIL import Image

        env = envs.make_render_env(self.env_id, self.size)
        env.reset(seed=0)
        fps = env.metadata.get("render_fps") or 30
        for left, right in pairs:
            for fragment in (left, right):
                if fragment["id"].rsplit("-", 1)[0] in self.answers or self.status != "labelling":
                    continue
                states = fragment["states"][fragment["alive"]]
                frames = [Image.fromarray(envs.render_state(env, s)) for s in states]
                frames = [f.resize((self.size, round(self.size * f.height / f.width))) for f in frames]
                buf = io.BytesIO()
                frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], loop=0, quality=60,
                               duration=round(1000 / fps))  # fmt: skip
                with self.lock:
                    self.clips[fragment["id"]] = buf.getvalue()
                    self.lock.notify_all()
        env.close()

    # ---- the page's endpoints
    def state(self) -> dict:
        """What the page shows: the first unanswered pair of the round (and the next, to preload)."""
        with self.lock:
            left = [p for p in self.pairs if p not in self.answers] if self.status == "labelling" else []
            done_in_round = len(self.pairs) - len(left)
            trained_on = sum(r.get("mu") is not None for r in self.answers.values())
            out = {"status": self.status, "round": self.round, "index": done_in_round + 1, "of": len(self.pairs),
                   "labels": trained_on, "answered": len(self.answers)}  # fmt: skip
            out["pair"], out["next"] = (left + [None, None])[:2]
            return out

    def answer(self, pair: str, answer: str) -> tuple[int, dict]:
        if answer not in ANSWERS:
            return HTTPStatus.BAD_REQUEST, {"error": f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}"}
        with self.lock:
            if pair in self.answers:
                return HTTPStatus.CONFLICT, {"error": f"pair {pair} was already answered"}
            if self.status != "labelling" or pair not in self.pairs:
                return HTTPStatus.NOT_FOUND, {"error": f"pair {pair} is not one of this round's queries"}
            mu = ANSWERS[answer]
            record = {"pair": pair, "fragments": [f"{pair}-L", f"{pair}-R"], "answer": answer,
                      "mu": None if np.isnan(mu) else mu, "round": self.round,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
            append_line(self.labels_path, record)
            self.answers[pair] = record
            self.lock.notify_all()
        return HTTPStatus.OK, self.state()

    def clip(self, fragment: str, timeout: float = 60.0) -> bytes | None:
        deadline = time.time() + timeout
        with self.lock:
            while fragment not in self.clips and time.time() < deadline and self.status == "labelling":
                self.lock.wait(timeout=0.2)
            return self.clips.get(fragment)

    def _handler(self) -> type:
        gatherer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep the run's stdout for the run
                pass

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store" if kind.startswith("application/json") else "max-age=600")
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: dict) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json")

            def _authorized(self, token: str | None) -> bool:
                if token is not None and secrets.compare_digest(token, gatherer.token):
                    return True
                self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token: use the URL the run printed"})
                return False

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if not self._authorized(parse_qs(url.query).get("token", [None])[0]):
                    return
                if url.path == "/":
                    self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
                elif url.path == "/api/state":
                    self._json(HTTPStatus.OK, gatherer.state())
                elif url.path.startswith("/clip/"):
                    body = gatherer.clip(url.path.removeprefix("/clip/"))
                    if body is None:
                        self._json(HTTPStatus.NOT_FOUND, {"error": "no such clip in this round"})
                    else:
                        self._send(HTTPStatus.OK, body, "image/webp")
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"})

            def do_POST(self) -> None:
                if urlparse(self.path).path != "/api/answer":
                    return self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                except json.JSONDecodeError:
                    return self._json(HTTPStatus.BAD_REQUEST, {"error": "the body must be JSON"})
                if self._authorized(body.get("token")):
                    self._json(*gatherer.answer(str(body.get("pair")), str(body.get("answer"))))

        return Handler
