"""Training that loses nothing when stopped: real ``mlcourse train`` processes killed with
SIGKILL at random moments (the first seconds included), stopped with SIGTERM and SIGINT, and
resumed, end with the same weights as an uninterrupted run and a log that holds each step once.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlcourse import experiments
from mlcourse.experiments.training import load_checkpoint

pytestmark = pytest.mark.slow

MLCOURSE = Path(sys.executable).with_name("mlcourse")
RUNS = {
    "maml-sine": [
        *("--steps", "1500", "--meta-batch-size", "4", "--k-support", "5", "--hidden", "8,8"),
        *("--log-every", "7"),
    ],
    "rl2-bandit": [
        *("--steps", "200", "--trials-per-step", "16", "--hidden-size", "16"),
        *("--minibatches", "2", "--log-every", "3"),
    ],
}


def start(name: str, out: Path, resume: bool = False) -> subprocess.Popen:
    argv = [str(MLCOURSE), "train", name, "--out", str(out), "--no-progress", *RUNS[name]]
    argv += ["--checkpoint-every", "0.1"] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def checkpoint_step(out: Path) -> int:
    try:
        return load_checkpoint(out, "cpu")["step"]
    except (FileNotFoundError, RuntimeError):
        return -1


def assert_same(a, b, where="learner"):
    """Every tensor and value of two checkpoint entries is identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run of each experiment."""
    root = tmp_path_factory.mktemp("straight")
    procs = {name: start(name, root / name) for name in RUNS}
    for proc in procs.values():
        code, err = finish(proc)
        assert code == 0, err
    return {name: root / name for name in RUNS}


@pytest.mark.parametrize("name", list(RUNS))
def test_sigkill_at_random_moments_loses_nothing(name, straight, tmp_path):
    rng = random.Random(f"kill {name}")
    out = tmp_path / "run"
    steps_at_kill = []
    proc = start(name, out)
    time.sleep(rng.uniform(0.2, 3.0))  # within the first seconds: importing, or the first steps
    for _ in range(5):
        if proc.poll() is not None:  # finished before this kill
            break
        proc.kill()
        proc.wait()
        steps_at_kill.append(checkpoint_step(out))
        # killed while importing, before the run wrote anything: start it again, as its
        # --resume error says to
        proc = start(name, out, resume=(out / "config.json").exists())
        # let this process get past its predecessor's checkpoint, then kill it a little later
        deadline = time.monotonic() + 60
        while checkpoint_step(out) <= steps_at_kill[-1] and proc.poll() is None:
            assert time.monotonic() < deadline, "the resumed run made no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
    code, err = finish(proc)
    assert code == 0, err
    kills = len(steps_at_kill)
    assert kills >= 3, f"only {kills} kills landed: {steps_at_kill}"
    a, b = load_checkpoint(straight[name], "cpu"), load_checkpoint(out, "cpu")
    assert a["step"] == b["step"] == a["config"]["steps"]
    assert_same(a["learner"], b["learner"])
    ours, theirs = log_of(out), log_of(straight[name])
    assert [row["step"] for row in ours] == [row["step"] for row in theirs], steps_at_kill
    assert [row["loss"] for row in ours] == [row["loss"] for row in theirs]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_step_reached_and_resume_finishes_the_run(sig, code, straight, tmp_path):
    out = tmp_path / "run"
    proc = start("maml-sine", out)
    deadline = time.monotonic() + 60
    while checkpoint_step(out) < 1:
        assert time.monotonic() < deadline and proc.poll() is None, "the run did not start"
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(sig)
    returncode, err = finish(proc)
    assert returncode == code, err
    reached = checkpoint_step(out)
    name = signal.Signals(sig).name
    assert f"stopped by {name} at step {reached}; the checkpoint in {out} holds it" in err
    assert "Traceback" not in err
    assert 1 <= reached < 1500
    assert log_of(out)[-1]["step"] <= reached
    returncode, err = finish(start("maml-sine", out, resume=True))
    assert returncode == 0, err
    assert_same(load_checkpoint(straight["maml-sine"], "cpu")["learner"], _learner(out))


def _learner(out):
    return load_checkpoint(out, "cpu")["learner"]


SMALL = {"meta_batch_size": 4, "k_support": 5, "hidden": "8,8", "log_every": 5}


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for out in (straight, killed):
        experiments.run_training(
            "maml-sine", out, overrides={**SMALL, "steps": 12}, device="cpu", progress=False
        )
    (killed / "checkpoint.pt").unlink()  # as if killed after writing config.json and a log line
    summary = experiments.run_training("maml-sine", killed, resume=True, progress=False)
    assert summary["step"] == 12
    assert_same(_learner(straight), _learner(killed))
    assert [r["step"] for r in log_of(killed)] == [5, 10, 12]


def test_the_log_is_cut_back_to_the_checkpoint_on_resume(tmp_path):
    out = tmp_path / "run"
    experiments.run_training(
        "maml-sine", out, overrides={**SMALL, "steps": 12}, device="cpu", progress=False
    )
    with open(out / "log.jsonl", "a") as log:  # written after the checkpoint, then killed
        log.write('{"step": 15, "loss": 1.0, "seconds": 1.0}\n{"step": 20, "lo')
    experiments.run_training("maml-sine", out, overrides={"steps": 20}, resume=True, progress=False)
    assert [r["step"] for r in log_of(out)] == [5, 10, 12, 15, 20]
    assert log_of(out)[3]["loss"] != 1.0
