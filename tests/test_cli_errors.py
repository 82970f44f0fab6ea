"""Bad input at the real ``mlcourse`` command, run as a learner runs it (a subprocess): every
case answers with one clear message and the right exit status, never a traceback, and a crafted
checkpoint runs nothing.

Exit statuses: 0 done (or nothing to do), 1 an error in what the files hold, 2 an option the
command does not accept.
"""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from mlcourse import experiments
from mlcourse.experiments.training import run_lock

pytestmark = pytest.mark.slow

MLCOURSE = Path(sys.executable).with_name("mlcourse")
SINE = ["--meta-batch-size", "4", "--k-support", "5", "--hidden", "8,8", "--no-progress"]
RL2 = ["--trials-per-step", "16", "--hidden-size", "16", "--minibatches", "2", "--no-progress"]
NO_CUDA = "cuda:99" if torch.cuda.is_available() else "cuda"


class Payload:
    """Pickles as a call to ``os.system``: what a crafted checkpoint would smuggle in."""

    def __init__(self, marker: Path):
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.command,))


# case: (arguments, exit status, text the message must contain). {name} is a path from `runs`.
CASES = {
    "resume a finished run": (
        ["train", "maml-sine", "--out", "{done_a}", "--resume", *SINE],
        0,
        "had already finished; nothing to do",
    ),
    "resume a finished run, --json": (
        ["train", "maml-sine", "--out", "{done_b}", "--resume", "--json", *SINE],
        0,
        '"already_finished": true',
    ),
    "resume with --steps below the step reached": (
        ["train", "maml-sine", "--out", "{done_c}", "--resume", "--steps", "3", *SINE],
        2,
        "already at step 6, past --steps 3: give a --steps above 6",
    ),
    "--max-seconds 0 saves the starting point": (
        ["train", "maml-sine", "--out", "{new}", "--max-seconds", "0", *SINE],
        0,
        "step 0/70000 in 0 s, no step taken; checkpoint in",
    ),
    "--max-seconds 0 --json": (
        ["train", "maml-sine", "--out", "{new}", "--max-seconds", "0", "--json", *SINE],
        0,
        '"loss": null',
    ),
    "--max-seconds -1": (
        ["train", "maml-sine", "--out", "{new}", "--max-seconds", "-1", "--json", *SINE],
        2,
        "argument --max-seconds: expected a finite number of at least 0, got '-1'",
    ),
    "--max-seconds nan": (
        ["train", "maml-sine", "--out", "{new}", "--max-seconds", "nan", *SINE],
        2,
        "argument --max-seconds: expected a finite number of at least 0, got 'nan'",
    ),
    "train on a CUDA device this machine lacks": (
        ["train", "maml-sine", "--out", "{new}", "--device", NO_CUDA, *SINE],
        2,
        "use --device cpu, or leave --device out",
    ),
    "eval on a CUDA device this machine lacks": (
        ["eval", "maml-sine", "--checkpoint", "{done}", "--device", NO_CUDA],
        2,
        "use --device cpu, or leave --device out",
    ),
    "eval --inner-steps -1": (
        ["eval", "maml-sine", "--checkpoint", "{done}", "--inner-steps", "-1"],
        2,
        "argument --inner-steps: expected a whole number of at least 0, got '-1'",
    ),
    "train --k-query 0": (
        ["train", "maml-sine", "--out", "{new}", "--k-query", "0", *SINE],
        2,
        "k_query (--k-query) must be at least 1, got 0",
    ),
    "train --hidden a,b": (
        ["train", "maml-sine", "--out", "{new}", "--hidden", "a,b", "--no-progress"],
        2,
        "hidden (--hidden) must be comma-separated positive layer widths such as 40,40; got 'a,b'",
    ),
    "train --hidden -4": (
        ["train", "maml-sine", "--out", "{new}", "--hidden", "-4", "--no-progress"],
        2,
        "hidden (--hidden) must be comma-separated positive layer widths such as 40,40; got '-4'",
    ),
    "train --inner-lr nan": (
        ["train", "maml-sine", "--out", "{new}", "--inner-lr", "nan", *SINE],
        2,
        "inner_lr (--inner-lr) must be a finite number, got nan",
    ),
    "eval a file that is not one of our checkpoints": (
        ["eval", "maml-sine", "--checkpoint", "{foreign}"],
        1,
        "is not a checkpoint written by `mlcourse train`",
    ),
    "eval a damaged checkpoint": (
        ["eval", "maml-sine", "--checkpoint", "{damaged}"],
        1,
        "is not a readable checkpoint",
    ),
    "resume another experiment's run": (
        ["train", "rl2-bandit", "--out", "{done}", "--resume", "--no-progress"],
        1,
        "holds a 'maml-sine' run, not 'rl2-bandit': resume it with `mlcourse train maml-sine",
    ),
    "eval given the checkpoint file instead of its folder": (
        ["eval", "maml-sine", "--checkpoint", "{done}/checkpoint.pt", "--num-tasks", "5"],
        0,
        "trained_steps   6",
    ),
    "rl2-bandit --lr 1e30": (
        ["train", "rl2-bandit", "--out", "{new}", "--lr", "1e30", "--steps", "5", *RL2],
        1,
        "training diverged at step 1: the loss or the parameters became NaN or infinite (no "
        "checkpoint was written). Lower the learning rates (--lr)",
    ),
    "resume with another --checkpoint-every": (
        ["train", "maml-sine", "--out", "{partial}", "--resume", "--checkpoint-every", "5", *SINE],
        0,
        "step 8/8",
    ),
    "resume changing what the run computes": (
        ["train", "maml-sine", "--out", "{done}", "--resume", "--meta-lr", "0.1", *SINE],
        1,
        "cannot change ['meta_lr'] when resuming (only --steps, --checkpoint-every, --log-every)",
    ),
    "eval a crafted checkpoint": (
        ["eval", "maml-sine", "--checkpoint", "{evil_sine}"],
        1,
        "refused to load",
    ),
    "resume a crafted checkpoint": (
        ["train", "maml-sine", "--out", "{evil_sine}", "--resume", *SINE],
        1,
        "refused to load",
    ),
    "start from a crafted checkpoint": (
        ["train", "rl2-bandit", "--out", "{new}", "--init-from", "{evil_rl2}", *RL2],
        1,
        "refused to load",
    ),
    "eval another experiment's crafted checkpoint": (
        ["eval", "rl2-bandit", "--checkpoint", "{evil_sine}"],
        1,
        "refused to load",
    ),
}


def _craft(run: Path, out: Path, marker: Path) -> Path:
    """A copy of ``run``'s checkpoint with a payload hidden inside the learner's state."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["learner"]["extra"] = Payload(marker)
    out.mkdir()
    torch.save(state, out / "checkpoint.pt")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    small_sine = {"meta_batch_size": 4, "k_support": 5, "hidden": "8,8"}
    done, partial, rl2 = root / "done", root / "partial", root / "rl2"
    experiments.run_training(
        "maml-sine", done, overrides={**small_sine, "steps": 6}, device="cpu", progress=False
    )
    experiments.run_training(
        "maml-sine", partial, overrides={**small_sine, "steps": 8}, max_seconds=0, progress=False
    )
    small_rl2 = {"trials_per_step": 16, "hidden_size": 16, "minibatches": 2, "steps": 1}
    experiments.run_training("rl2-bandit", rl2, overrides=small_rl2, progress=False)
    foreign, damaged = root / "foreign", root / "damaged"
    foreign.mkdir()
    torch.save({"weights": torch.zeros(3)}, foreign / "checkpoint.pt")
    damaged.mkdir()
    (damaged / "checkpoint.pt").write_bytes((done / "checkpoint.pt").read_bytes()[:500])
    for copy in ("done_a", "done_b", "done_c"):  # cases that take the run's lock
        shutil.copytree(done, root / copy)
    marker = root / "payload-ran"
    paths = {
        "done": done,
        **{copy: root / copy for copy in ("done_a", "done_b", "done_c")},
        "partial": partial,
        "foreign": foreign,
        "damaged": damaged,
        "evil_sine": _craft(done, root / "evil_sine", marker),
        "evil_rl2": _craft(rl2, root / "evil_rl2", marker),
    }
    return root, paths, marker


def mlcourse(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MLCOURSE), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def answers(runs):
    """Every case run once, two at a time (each is a fresh process importing torch)."""
    root, paths, _ = runs

    def run(item):
        name, (argv, _, _) = item
        new = root / "new" / name.replace(" ", "_").replace("/", "_")
        return name, mlcourse(*(a.format(new=new, **paths) for a in argv))

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, CASES.items()))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_clear_message(case, answers, runs):
    argv, status, text = CASES[case]
    proc = answers[case]
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert text in (proc.stdout if status == 0 else proc.stderr), (proc.stdout, proc.stderr)
    assert "Delete" not in proc.stderr  # never advise deleting a checkpoint
    if status != 0:
        assert proc.stdout == ""  # --json or not: nothing half-printed on standard output
        message = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(message) == 1, proc.stderr
    if "--json" in argv and status == 0:
        assert isinstance(json.loads(proc.stdout), dict)
    assert not runs[2].exists(), "a crafted checkpoint ran its payload"


def test_a_crafted_checkpoint_is_refused_in_python_too(runs):
    from mlcourse.experiments.training import load_checkpoint
    from mlcourse.runtime import UnsafeCheckpoint

    _, paths, marker = runs
    with pytest.raises(UnsafeCheckpoint, match=r"holds a Python object \(posix.system\)"):
        load_checkpoint(paths["evil_sine"])
    with pytest.raises(UnsafeCheckpoint):
        experiments.load_learner("maml-sine", paths["evil_sine"], "cpu")
    assert not marker.exists()


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):  # a training process holds the folder
        proc = mlcourse("train", "maml-sine", "--out", str(out), "--steps", "3", *SINE)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"another training process (pid {os.getpid()}) is writing to {out}" in proc.stderr
    assert not (out / "checkpoint.pt").exists() and not (out / "config.json").exists()
    proc = mlcourse("train", "maml-sine", "--out", str(out), "--steps", "3", *SINE)
    assert proc.returncode == 0, proc.stderr  # the lock went with the process that held it
