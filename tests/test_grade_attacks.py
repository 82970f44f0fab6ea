"""`mlcourse grade` against submissions that solve nothing and try to forge or sabotage scores.

Every attack starts from the released lesson 02 exercise (nothing implemented, 0/6 when honest)
and must still score 0, while a correct submission graded in the same run (the solution) scores
6/6, with one kernel at a time and with two. What each attack tries is in its docstring.
"""

import csv
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from mlcourse.course import sandbox

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def bubblewrap():
    """These tests are about the sandbox: without bubblewrap they fail, never skip."""
    assert sandbox.bwrap(), "install bubblewrap (`make test` does: apt-get install bubblewrap)"


ROOT = Path(__file__).resolve().parents[1]
LESSON = "02_maml"
CHECKS = ["inner_update", "maml_meta_loss", "fixed_maml_step", "fixed_meta_test"]
MARKER = f"mlcourse-attack-{uuid.uuid4().hex[:8]}"  # names the attackers' lasting processes

FORGED = f"""
def forged(name):
    return {{"check": name, "lesson": "02_maml", "passed": True, "message": "forged",
            "hint": None, "points": 2.0, "max_points": 2.0}}
NAMES = {CHECKS!r}
"""


def _exercise():
    return nbformat.read(ROOT / "exercises" / f"{LESSON}.ipynb", as_version=4)


def _first_check(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if "check." in c.source and "(" in c.source)


def _with_cell(source: str):
    """The exercise with ``source`` as a new cell just before its first check cell."""
    nb = _exercise()
    nb.cells.insert(_first_check(nb), new_code_cell(source))
    return nb


def results_channel(_):
    """Writes passing records to the old results file and displays the grader's MIME type."""
    return _with_cell(
        FORGED
        + """
import json, os
from IPython.display import display
for name in NAMES:
    path = os.environ.get("MLCOURSE_RESULTS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(forged(name)) + "\\n")
    display({"application/vnd.mlcourse.check+json": forged(name), "text/plain": "ok"}, raw=True)
"""
    )


def record_calls(_):
    """Calls the checks' own ``record`` and displays passing ``CheckResult`` objects."""
    return _with_cell(
        FORGED
        + """
from mlcourse.course.checks._core import CheckResult, record
for name in NAMES:
    result = CheckResult(**forged(name))
    record(result)
    display(result)
"""
    )


def replaced_checks(_):
    """Replaces the check functions (and the checks' ``record``) before the check cells run."""
    return _with_cell(
        FORGED
        + """
import mlcourse.course.checks as check_module
import mlcourse.course.checks._core as core
from mlcourse.course.checks._core import CheckResult
for name in NAMES:
    setattr(check_module, name, lambda *a, _name=name, **k: CheckResult(**forged(_name)))
check = check_module
core.record = lambda result: None
"""
    )


def rewritten_check_cells(_):
    """Rewrites every locked check cell to display a passing result."""
    nb = _exercise()
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            name = cell.source.split("check.")[1].split("(")[0]
            cell.source = FORGED + (
                "from mlcourse.course.checks._core import "
                f"CheckResult\nCheckResult(**forged({name!r}))"
            )
    return nb


def classmates_notebook(folder):
    """Looks for the grader's command line and folder in /proc, then for the other
    submissions, and runs the solution cells of the first it can read."""
    return _with_cell(
        f"""
import glob, json, os
seen = []
for pid in {{os.getppid(), 1, *range(2, 50)}}:
    try:
        seen.append(open(f"/proc/{{pid}}/cmdline").read().replace("\\0", " "))
        seen.append(os.readlink(f"/proc/{{pid}}/cwd"))
    except OSError:
        pass
print(seen)
for path in glob.glob({str(folder)!r} + "/*correct*.ipynb"):
    for cell in json.load(open(path))["cells"]:
        if "BEGIN SOLUTION" in "".join(cell["source"]):
            exec("".join(cell["source"]))
"""
    )


def lasting_daemon(folder):
    """Starts a ``setsid`` daemon that waits for the gradebook to be written, then rewrites it
    (and stays, named by MARKER so that the test can look for it)."""
    book = folder / "gradebook.csv"
    script = f"while [ ! -f {book} ]; do sleep 0.2; done; sleep 1; echo hacked > {book}; sleep 600"
    return _with_cell(
        f"""
import subprocess
subprocess.Popen(
    ["setsid", "sh", "-c", {script!r}, {MARKER!r}],
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
"""
    )


def saboteur(_):
    """Tries to fail the submission graded beside it: writes failing records into every
    grader scratch folder and results file it can find, and kills every kernel it can see."""
    return _with_cell(
        """
import glob, json, os, signal, tempfile
scratch = [tempfile.gettempdir(), "/tmp", os.path.dirname(os.getcwd())]
for folder in [f for top in scratch for f in glob.glob(top + "/mlcourse-grade-*")]:
    for path in glob.glob(folder + "/*"):
        try:
            with open(path, "a") as fh:
                fh.write(json.dumps({"check": "inner_update", "passed": False}) + "\\n")
        except OSError:
            pass
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            if b"ipykernel" in open(f"/proc/{pid}/cmdline", "rb").read():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""
    )


PACKAGE_ANSWERS = {  # solution cell -> an answer that calls the package's implementation
    "inner_update": """
import torch.nn.functional as F
from mlcourse.algorithms.maml import adapt

def inner_update(model, params, x_support, y_support, inner_lr):
    return adapt(model, params, x_support, y_support, loss_fn=F.mse_loss, inner_lr=inner_lr)
""",
    "maml_meta_loss": """
import torch.nn.functional as F
import mlcourse.algorithms.maml

def maml_meta_loss(model, params, tasks, inner_lr, num_inner_steps):
    return mlcourse.algorithms.maml.meta_loss(model, params, tasks, loss_fn=F.mse_loss,
                                   inner_lr=inner_lr, num_inner_steps=num_inner_steps)
""",
    "fixed_maml_step": """
import torch.nn.functional as F
from mlcourse.algorithms.maml import meta_loss

def fixed_maml_step(model, meta_optimizer, tasks, inner_lr):
    meta_optimizer.zero_grad()
    loss = meta_loss(model, dict(model.named_parameters()), tasks, loss_fn=F.mse_loss,
                     inner_lr=inner_lr)
    loss.backward()
    meta_optimizer.step()
    return loss.item()
""",
    "fixed_meta_test": """
import torch.nn.functional as F
from torch.func import functional_call
from mlcourse.algorithms.maml import adapt

def fixed_meta_test(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    params = adapt(model, dict(model.named_parameters()), x_support, y_support,
                   loss_fn=F.mse_loss, inner_lr=inner_lr, num_inner_steps=num_inner_steps)
    return functional_call(model, params, (x_query,)).detach()
""",
}


def calls_the_package(_):
    """Answers every exercise by calling the package's own implementation of it."""
    nb = _exercise()
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in PACKAGE_ANSWERS:
            cell.source = PACKAGE_ANSWERS[grade_id]
    return nb


ATTACKS = {
    f.__name__: f
    for f in (
        results_channel,
        record_calls,
        replaced_checks,
        rewritten_check_cells,
        classmates_notebook,
        lasting_daemon,
        saboteur,
        calls_the_package,
    )
}


def _grade(folder: Path, jobs: int):
    book = folder / "gradebook.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "mlcourse", "grade", str(folder), "--csv", str(book)]
        + ["--jobs", str(jobs), "--json", "--timeout", "300"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stderr.splitlines()[0] == "mlcourse grade: each submission runs sandboxed (bubblewrap)"
    )
    return json.loads(proc.stdout), book


@pytest.fixture(scope="module", params=[1, 2], ids=["jobs1", "jobs2"])
def graded(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"attacks-jobs{request.param}")
    solution = nbformat.read(ROOT / "solutions" / f"{LESSON}.ipynb", as_version=4)
    nbformat.write(solution, folder / f"{LESSON}-correct.ipynb")
    for name, make in ATTACKS.items():
        nbformat.write(make(folder), folder / f"{LESSON}-{name}.ipynb")
    result, book = _grade(folder, request.param)
    time.sleep(5)  # the daemon's moment to strike, had it survived
    return {row["student"]: row for row in result["submissions"]}, book


def test_the_correct_submission_scores_full(graded):
    rows, _ = graded
    assert rows["correct"]["score"] == rows["correct"]["max_score"] == 6.0, rows["correct"]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attack_earns_nothing(attack, graded):
    rows, _ = graded
    assert rows[attack]["score"] == 0.0, (rows[attack]["checks"], rows[attack]["message"])
    assert rows[attack]["sandbox"] == "bwrap"


def test_nothing_a_submission_started_outlives_the_grading(graded):
    rows, book = graded
    with open(book, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert {row["student"] for row in table} == set(rows)  # not "hacked"
    found = subprocess.run(["pgrep", "-f", MARKER], capture_output=True, text=True)
    assert found.stdout == "", f"processes left running: {found.stdout}"


def test_a_submission_cannot_exhaust_memory_or_fill_the_log(tmp_path):
    """A solved lesson that also asks for 8 GB and prints 30 MB: the allocation fails inside its
    kernel, the printing is cut, the grader stays small, and the checks still score."""
    nb = nbformat.read(ROOT / "solutions" / f"{LESSON}.ipynb", as_version=4)
    nb.cells.insert(
        _first_check(nb),
        new_code_cell(
            "import torch\n\nfor _ in range(30):\n    print('y' * 1_000_000)\n"
            "hog = torch.ones(2_000_000_000)  # 8 GB"
        ),
    )
    nbformat.write(nb, tmp_path / f"{LESSON}-hog.ipynb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlcourse", "grade", str(tmp_path), "--json", "--memory", "3G"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))  # high-water mark
        except (OSError, IndexError):
            pass
        time.sleep(0.1)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    (row,) = json.loads(out)["submissions"]
    assert row["score"] == 6.0 and row["status"] == "error", row
    assert "can't allocate memory" in row["message"]
    assert "output beyond 2,000,000 bytes was dropped" in row["message"]
    # The grader imports neither PyTorch nor the checks (about 60 MiB idle; 170 MiB measured here
    # while 30 MB of printing streamed past it). Keeping what it dropped would cross this line.
    assert peak < 256 * 1024, f"the grader grew to {peak / 1024:.0f} MiB"


def test_a_course_installed_under_tmp_is_visible_in_the_sandbox(tmp_path, monkeypatch):
    """The sandbox's private /tmp must not hide a virtual environment or a checkout that lives
    under /tmp (a clone made with mktemp, say): the Python folders are bound on top of it."""
    env = tmp_path / "venv"
    env.mkdir()
    (env / "marker.txt").write_text("the environment is here")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mounts = sandbox._python_mounts()
    monkeypatch.setattr(sandbox, "_python_mounts", lambda: [*mounts, str(env)])
    argv = sandbox.sandbox_argv(["/bin/cat", str(env / "marker.txt")], scratch, memory=None)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "the environment is here"
    hidden = sandbox.sandbox_argv(["/bin/ls", str(tmp_path.parent)], scratch, memory=None)
    listed = subprocess.run(hidden, capture_output=True, text=True, timeout=60).stdout.split()
    assert listed == [tmp_path.name], listed  # the rest of the host's /tmp stays out of sight
