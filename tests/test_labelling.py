"""drlhp's labelling page (cleanil/labelling.py): its endpoints without a browser (token, unknown pair, duplicate
answer, skip, clips), a run stopped with half a round answered and resumed, --labels-from, and the page itself in
headless Chromium (Debian's chromium and chromium-driver, which .ci/run installs), answering by keyboard and by
click while a real drlhp run waits on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, read_metrics, run_cli

from cleanil import envs, labelling

TINY = ("--env", "Pendulum", "--gatherer", "web", "--total-steps", "900", "--learning-starts", "300",
        "--query-every", "300", "--batch-size", "32", "--num-queries", "8", "--reward-updates", "5",
        "--eval-every", "900", "--eval-episodes", "2", "--hidden", "32", "32", "--fragment-length", "8",
        "--compile", "False", "--log-every", "100")  # fmt: skip


def request(url: str, body: dict | None = None) -> tuple[int, dict | bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if r.headers["Content-Type"].startswith("application/json") else raw
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def pendulum_fragments(n: int, length: int = 5) -> list[dict]:
    """n fragments of random actions on Pendulum, with the simulator states the clips are drawn from."""
    env, out = envs.make_env("Pendulum-v1"), []
    env.reset(seed=0)
    for _ in range(n):
        states, rewards = [], []
        for _ in range(length):
            states.append(envs.sim_state(env))
            rewards.append(env.step(env.action_space.sample())[1])
        out.append({"obs": np.zeros((length, 3), np.float32), "actions": np.zeros((length, 1), np.float32),
                    "alive": np.ones(length, bool), "true_rewards": np.array(rewards),
                    "states": np.array(states)})  # fmt: skip
    return out


def test_endpoints_token_unknown_duplicate_skip_and_clips(tmp_path):
    gatherer = labelling.WebGatherer(tmp_path, envs.resolve_env_id("Pendulum"), size=64)
    base, token = gatherer.url.split("/?")[0], gatherer.token
    frags = pendulum_fragments(4)
    pairs = [(frags[2 * k] | {"id": f"0-{k}-L"}, frags[2 * k + 1] | {"id": f"0-{k}-R"}) for k in range(2)]
    result = {}
    asking = threading.Thread(target=lambda: result.update(mu=gatherer(pairs)))
    asking.start()
    try:
        deadline = time.time() + 30
        while request(f"{base}/api/state?token={token}")[1]["status"] != "labelling" and time.time() < deadline:
            time.sleep(0.05)
        assert request(f"{base}/api/state")[0] == 403
        assert request(f"{base}/api/state?token=wrong")[0] == 403
        assert request(f"{base}/api/answer", {"token": "wrong", "pair": "0-0", "answer": "left"})[0] == 403
        status, state = request(f"{base}/api/state?token={token}")
        assert (status, state["pair"], state["next"], state["index"], state["of"]) == (200, "0-0", "0-1", 1, 2)
        status, clip = request(f"{base}/clip/0-0-L?token={token}")
        assert status == 200 and clip[:4] == b"RIFF" and clip[8:12] == b"WEBP"
        status, reply = request(f"{base}/api/answer", {"token": token, "pair": "9-9", "answer": "left"})
        assert status == 404 and "not one of this round's queries" in reply["error"]
        status, reply = request(f"{base}/api/answer", {"token": token, "pair": "0-0", "answer": "sideways"})
        assert status == 400 and "answer must be one of" in reply["error"]
        assert request(f"{base}/api/answer", {"token": token, "pair": "0-0", "answer": "left"})[0] == 200
        status, reply = request(f"{base}/api/answer", {"token": token, "pair": "0-0", "answer": "right"})
        assert status == 409 and reply["error"] == "pair 0-0 was already answered"
        status, reply = request(f"{base}/api/answer", {"token": token, "pair": "0-1", "answer": "skip"})
        assert status == 200 and reply["labels"] == 1 and reply["answered"] == 2  # a skip is not a label
        asking.join(timeout=30)
        assert result["mu"][0] == 1.0 and np.isnan(result["mu"][1])
        lines = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
        assert [(r["pair"], r["answer"], r["mu"]) for r in lines] == [("0-0", "left", 1.0), ("0-1", "skip", None)]
        with np.load(tmp_path / "queries" / "round_0000.npz") as q:
            assert list(q["pair_ids"]) == ["0-0", "0-1"]
            assert q["r1"][1] == pytest.approx(frags[2]["true_rewards"].sum())
        assert json.loads((tmp_path / "labelling.json").read_text())["token"] == token
        assert oct((tmp_path / "labelling.json").stat().st_mode & 0o777) == "0o600"
    finally:
        gatherer.close()
    with pytest.raises(urllib.error.URLError):  # the server stopped with the run
        urllib.request.urlopen(f"{base}/api/state?token={token}", timeout=5)
    assert not (tmp_path / "labelling.json").exists()


def test_answers_given_before_are_not_asked_again(tmp_path):
    labelling.append_line(tmp_path / "labels.jsonl", {"pair": "0-0", "answer": "right", "mu": 0.0})
    gatherer = labelling.WebGatherer(tmp_path, "Pendulum-v1", size=32)
    try:
        frags = pendulum_fragments(2)
        mu = gatherer([(frags[0] | {"id": "0-0-L"}, frags[1] | {"id": "0-0-R"})])  # returns without a person
        assert mu.tolist() == [0.0]
    finally:
        gatherer.close()


def run_in_background(tmp_path: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.Popen([sys.executable, "cleanil/drlhp.py", *TINY, *flags], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def page_of(run: Path, timeout: float = 120) -> tuple[str, str]:
    deadline = time.time() + timeout
    while not (run / "labelling.json").exists():
        assert time.time() < deadline, "the run's labelling page did not start"
        time.sleep(0.1)
    page = json.loads((run / "labelling.json").read_text())
    return page["url"].split("/?")[0], page["token"]


def test_stopped_with_half_a_round_answered_resumes_with_the_rest(tmp_path):
    run = tmp_path / "run"
    proc = run_in_background(tmp_path, "--run-dir", str(tmp_path), "--run-name", "run")
    base, token = page_of(run)
    state = {"status": "training"}
    while state["status"] != "labelling":
        state = request(f"{base}/api/state?token={token}")[1]
    first_round = state["of"]
    for _ in range(first_round // 2):
        pair = request(f"{base}/api/state?token={token}")[1]["pair"]
        assert request(f"{base}/api/answer", {"token": token, "pair": pair, "answer": "left"})[0] == 200
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM while waiting for labels" in err and f"--resume {run}" in err
    assert len((run / "labels.jsonl").read_text().splitlines()) == first_round // 2

    proc = subprocess.Popen([sys.executable, "cleanil/drlhp.py", "--resume", str(run)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    base, token = page_of(run)
    state = {"status": "training"}
    while state["status"] != "labelling":
        state = request(f"{base}/api/state?token={token}")[1]
    assert (state["of"], state["index"]) == (first_round, first_round // 2 + 1)  # only the unanswered pairs
    labeller = run_cli("scripts/scripted_labeller.py", "--run", str(run))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert labeller.returncode == 0, labeller.stderr
    records = [json.loads(line) for line in (run / "labels.jsonl").read_text().splitlines()]
    assert len({r["pair"] for r in records}) == len(records)  # no pair asked twice
    rows = read_metrics(run)
    assert max(r.get("queries", 0) for r in rows) == len(records) == 8  # every label asked, once


def test_labels_from_a_web_run_train_a_new_run(tmp_path):
    proc = run_in_background(tmp_path, "--run-dir", str(tmp_path), "--run-name", "web")
    labeller = run_cli("scripts/scripted_labeller.py", "--run", str(tmp_path / "web"))
    proc.communicate(timeout=300)
    assert proc.returncode == 0 and labeller.returncode == 0, labeller.stderr
    flags = list(TINY)
    flags[flags.index("web")] = "synthetic"
    res = run_cli("cleanil/drlhp.py", *flags, "--labels-from", str(tmp_path / "web" / "labels.jsonl"),
                  "--run-dir", str(tmp_path), "--run-name", "from_labels")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "8 labelled pairs, 100% of the decided ones agree with the true returns" in res.stdout
    rows = read_metrics(tmp_path / "from_labels")
    assert rows[0]["labels/agreement_with_true_return"] == 1.0 and rows[0]["queries"] == 8
    assert max(r.get("queries", 0) for r in rows) == 8  # no more queries were asked
    res = run_cli("cleanil/drlhp.py", *flags, "--labels-from", str(tmp_path / "nope.jsonl"), "--run-dir", str(tmp_path))
    assert res.returncode == 2 and "--labels-from" in res.stderr and "no such file" in res.stderr


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
LOADED = "return arguments[0].complete && arguments[0].naturalWidth"  # an image the browser has decoded


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="no Chromium: apt-get install chromium chromium-driver (.ci/run installs them)")  # fmt: skip
def test_page_in_a_real_browser_by_keyboard_and_click(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    proc = run_in_background(tmp_path, "--run-dir", str(tmp_path), "--run-name", "run")
    base, token = page_of(tmp_path / "run")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    given, times = [], []
    try:
        browser.get(f"{base}/?token={token}")
        wait = WebDriverWait(browser, 120, poll_frequency=0.05)
        keys = {"left": Keys.ARROW_LEFT, "right": Keys.ARROW_RIGHT, "equal": Keys.ARROW_UP, "skip": Keys.ARROW_DOWN}
        plan = ["left", "right", "equal", "skip"]
        while proc.poll() is None:
            try:
                wait.until(lambda b: b.find_element(By.ID, "btn-left").is_enabled() or proc.poll() is not None)
            except Exception:  # noqa: BLE001 - the run ended while waiting
                break
            if proc.poll() is not None:
                break
            progress = browser.find_element(By.ID, "progress").text
            assert progress.startswith("query ") and " in this round" in progress
            for side in ("left-clip", "right-clip"):  # both clips decoded: the person can compare them
                clip = browser.find_element(By.ID, side)
                wait.until(lambda b, img=clip: b.execute_script(LOADED, img))
            if os.environ.get("CLEANIL_SCREENSHOT") and not given:
                browser.save_screenshot(os.environ["CLEANIL_SCREENSHOT"])
            answer = plan[len(given) % len(plan)]
            start = time.time()
            if len(given) % 2:  # every other answer by click, the rest by keyboard
                browser.find_element(By.ID, f"btn-{answer}").click()
            else:
                browser.find_element(By.TAG_NAME, "body").send_keys(keys[answer])
            given.append((progress, answer))
            wait.until(lambda b, p=progress: b.find_element(By.ID, "progress").text != p or proc.poll() is not None)
            times.append(time.time() - start)
    finally:
        browser.quit()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in records] == [a for _, a in given]
    assert len(records) >= 8  # 8 labels are needed, and skips do not count
    print(f"{len(given)} answers, page response after an answer: median {1000 * np.median(times):.0f} ms")


def test_web_labels_learn_exactly_like_the_in_process_oracle(tmp_path):
    """Every label through the page's HTTP endpoints, given as the oracle would: the run must learn the same
    reward and policy, row for row (eager updates, so that both runs draw the same numbers)."""
    proc = run_in_background(tmp_path, "--run-dir", str(tmp_path), "--run-name", "web", "--seed", "1")
    labeller = run_cli("scripts/scripted_labeller.py", "--run", str(tmp_path / "web"))
    proc.communicate(timeout=300)
    assert proc.returncode == 0 and labeller.returncode == 0, labeller.stderr
    flags = list(TINY)
    flags[flags.index("web")] = "synthetic"
    res = run_cli("cleanil/drlhp.py", *flags, "--seed", "1", "--run-dir", str(tmp_path), "--run-name", "oracle")
    assert res.returncode == 0, res.stderr

    def rows(run: str) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k not in ("time", "env_steps_per_s")} for r in read_metrics(tmp_path / run)
        ]

    web, oracle = rows("web"), rows("oracle")
    assert web == oracle
    assert max(r.get("queries", 0) for r in web) == 8 and "reward/new_label_accuracy" in web[-2] | web[-1]
    assert np.isfinite(web[-1]["eval/return"])  # the policy trained on those labels was scored
