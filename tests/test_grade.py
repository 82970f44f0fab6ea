"""`mlcourse grade` on real submissions made here from solutions/00_welcome.ipynb: full marks,
nothing done, half done, a deleted check cell, a crash, a dead kernel, a hang and a file that is
not a notebook, all graded in runs that finish."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from mlcourse.course import grading, release
from mlcourse.course.check_protocol import CHECK_MIME

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_welcome.ipynb"
TIMEOUT = 120  # seconds per submission: generous, the machine may be busy
HANG_TIMEOUT = 5  # the hanging submission gets its own run with a short limit


def _index(nb, text):
    return next(i for i, c in enumerate(nb.cells) if text in c.source)


def _solution():
    return nbformat.read(SOLUTION, as_version=4)


def _half_done():
    nb = _solution()
    cell = nb.cells[_index(nb, "def per_task_mse")]
    cell.source = release.strip_solutions(cell.source)
    return nb


def _without_check_cell():
    nb = _solution()
    del nb.cells[_index(nb, "check.per_task_mse(")]
    return nb


def _insert_before_last_check(source):
    nb = _solution()
    nb.cells.insert(_index(nb, "check.per_task_mse("), new_code_cell(source))
    return nb


def _raises():
    nb = _solution()
    nb.cells.insert(
        _index(nb, "def support_query_split"), new_code_cell('raise RuntimeError("boom")')
    )
    return nb


def _with_old_names():
    """The solution as released before the package's folders: its cells import the old names."""
    nb = _solution()
    old = {
        "from mlcourse.runtime import": "from mlcourse.training import",
        "from mlcourse.course import checks as check": "from mlcourse import checks as check",
    }
    for cell in nb.cells:
        for new, then in old.items():
            cell.source = cell.source.replace(new, then)
    text = "\n".join(c.source for c in nb.cells)
    assert all(then in text for then in old.values()) and "mlcourse.course" not in text
    return nb


SUBMISSIONS = {  # file name -> (notebook, expected score, expected status)
    "00_welcome-solution.ipynb": (_solution, 2, "ok"),
    "00_welcome-old-names.ipynb": (_with_old_names, 2, "ok"),
    "00_welcome-exercise.ipynb": (
        lambda: nbformat.read(ROOT / "exercises" / "00_welcome.ipynb", as_version=4),
        0,
        "ok",
    ),
    "00_welcome-half.ipynb": (_half_done, 1, "ok"),
    "00_welcome-deleted.ipynb": (_without_check_cell, 1, "ok"),
    "00_welcome-raises.ipynb": (_raises, 2, "error"),
    "00_welcome-dies.ipynb": (
        lambda: _insert_before_last_check("import os\n\nos._exit(1)"),
        1,
        "error",
    ),
    "00_welcome-garbage.ipynb": (None, 0, "invalid"),
}
HANGS = "00_welcome-hangs.ipynb"  # cut before its first check, however slow the machine


def _hangs():
    nb = _solution()
    nb.cells.insert(
        _index(nb, "def support_query_split"), new_code_cell("import time\n\ntime.sleep(600)")
    )
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    for name, (make, _, _) in SUBMISSIONS.items():
        if make is None:
            (folder / name).write_text("{ this is not JSON")
        else:
            nbformat.write(make(), folder / name)
    hang_folder = tmp_path_factory.mktemp("hang")
    nbformat.write(_hangs(), hang_folder / HANGS)
    book = folder / "gradebook.csv"
    grade = [sys.executable, "-m", "mlcourse", "grade", "--json"]
    runs = [  # both at once: the hang's time limit passes while the others run
        subprocess.Popen(
            [*grade, str(folder), "--csv", str(book), "--timeout", str(TIMEOUT), "--jobs", "3"],
            **_pipes(folder),
        ),
        subprocess.Popen([*grade, str(hang_folder), "--timeout", str(HANG_TIMEOUT)], **_pipes()),
    ]
    outs = [run.communicate(timeout=TIMEOUT * len(SUBMISSIONS)) for run in runs]
    for run, (_, err) in zip(runs, outs, strict=True):
        assert run.returncode == 0, err
    with open(book, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return json.loads(outs[0][0]), rows, outs[0][1], json.loads(outs[1][0])


def _pipes(cwd=None):
    return {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "cwd": cwd}


@pytest.mark.slow
def test_every_submission_gets_its_score_and_status(graded):
    result, _, log, _ = graded
    by_name = {Path(r["path"]).name: r for r in result["submissions"]}
    assert sorted(by_name) == sorted(SUBMISSIONS), log
    for name, (_, score, status) in SUBMISSIONS.items():
        row = by_name[name]
        assert (row["score"], row["status"]) == (score, status), (name, row["message"], log)
        assert row["max_score"] == 2 and row["lesson"] == "00_welcome"
    assert by_name["00_welcome-half.ipynb"]["checks"] == {
        "support_query_split": 1.0,
        "per_task_mse": 0.0,
    }
    assert "boom" in by_name["00_welcome-raises.ipynb"]["message"]
    assert "died" in by_name["00_welcome-dies.ipynb"]["message"]


@pytest.mark.slow
def test_gradebook_csv_has_a_row_per_submission_and_a_column_per_check(graded):
    result, rows, _, _ = graded
    assert list(rows[0])[:9] == [
        "student",
        "path",
        "lesson",
        "score",
        "max_score",
        "status",
        "student_total",
        "support_query_split",
        "per_task_mse",
    ]
    assert list(rows[0])[-2:] == ["sandbox", "message"]
    for row, submission in zip(rows, result["submissions"], strict=True):
        assert row["path"] == submission["path"]
        assert float(row["score"]) == submission["score"] and row["status"] == submission["status"]
        assert float(row["per_task_mse"]) == submission["checks"]["per_task_mse"]
        assert row["student"] == Path(row["path"]).stem.split("-", 1)[1]
        assert float(row["student_total"]) == submission["score"]  # one lesson each


@pytest.mark.slow
def test_a_hanging_submission_is_cut_at_its_time_limit(graded):
    (row,) = graded[3]["submissions"]
    assert (row["status"], row["score"], row["max_score"]) == ("timeout", 0.0, 2.0)
    assert f"after {HANG_TIMEOUT} s" in row["message"]


def test_kernels_run_this_python_whatever_kernelspecs_are_installed():
    spec = grading.ThisPythonKernelManager().kernel_spec
    assert spec.argv[0] == sys.executable and "ipykernel_launcher" in spec.argv


def _notebook(*sources):
    return nbformat.v4.new_notebook(cells=[new_code_cell(s) for s in sources])


CONNECTION = "from ipykernel import get_connection_info\ninfo = get_connection_info(unpack=True)"


@pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets are POSIX-only")
def test_kernels_started_together_each_get_their_own_unix_sockets():
    from concurrent.futures import ThreadPoolExecutor

    books = [_notebook(CONNECTION, "print(info['transport'], info['ip'])") for _ in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda nb: grading.execute_notebook(nb, timeout=60), books))
    assert outcomes == [("ok", "")] * 4
    printed = [nb.cells[1].outputs[0]["text"].split() for nb in books]
    assert {transport for transport, _ in printed} == {"ipc"}
    assert len({address for _, address in printed}) == 4


def test_a_kernel_that_fails_to_start_is_started_again(monkeypatch):
    start = grading.ThisPythonKernelManager.start_kernel
    calls = []

    async def flaky_start(self, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return await start(self, **kwargs)

    monkeypatch.setattr(grading.ThisPythonKernelManager, "start_kernel", flaky_start)
    nb = _notebook("x = 6 * 7", "print(x)")
    assert grading.execute_notebook(nb, timeout=60) == ("ok", "")
    assert len(calls) == 2 and nb.cells[1].outputs[0]["text"] == "42\n"


def test_a_kernel_that_never_starts_is_an_error_not_a_crash(monkeypatch):
    async def never_starts(self, **kwargs):
        raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(grading.ThisPythonKernelManager, "start_kernel", never_starts)
    status, message = grading.execute_notebook(_notebook("1"), timeout=60)
    assert status == "error" and "could not run" in message and "kernel_info" in message


def test_each_lesson_grades_exactly_its_registered_checks_with_their_points():
    from mlcourse.course.checks import REGISTRY

    registered: dict[str, dict[str, float]] = {}
    for name, c in REGISTRY.items():
        registered.setdefault(c["lesson"], {})[name] = c["points"]
    graded = {lesson: grading.lesson_checks(lesson) for lesson in registered}
    assert graded == registered
    assert all(list(graded[les]) == list(registered[les]) for les in registered)  # same order


def test_the_grader_loads_neither_pytorch_nor_the_checks(tmp_path):
    """The grader process stays small: a submission's checks run in its own kernel."""
    code = (
        "import sys; from mlcourse import cli, grading; "
        "cli.main(['grade', sys.argv[1], '--json']); "
        "print([m for m in ('torch', 'numpy', 'mlcourse.course.checks') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_lesson_comes_from_the_file_name():
    assert grading.lesson_of("alice/00_welcome.ipynb") == "00_welcome"
    assert grading.lesson_of("00_welcome-bob.ipynb") == "00_welcome"
    assert grading.lesson_of("welcome.ipynb") is None
    assert grading.lesson_of("99_nothing.ipynb") is None


def _displayed(check, passed):
    record = {"check": check, "passed": passed}
    return nbformat.v4.new_output(
        "display_data", data={CHECK_MIME: record, "text/plain": str(passed)}
    )


def test_only_a_restored_check_cell_scores_and_its_last_result_counts():
    released = [{"grade_id": "check_a", "source": "check.a(f)", "checks": ["a"], "points": 1}]
    nb = _notebook("forged = 1", "check.a(f)", "check.a(f)")
    nb.cells[1].metadata["nbgrader"] = {"grade_id": "check_a", "grade": True}
    nb.cells[2].metadata["nbgrader"] = {"grade_id": "check_a", "grade": True}  # a copy
    nb.cells[1].source = "forged = True  # rewritten"
    restored = grading.restore_check_cells(nb, released)
    assert list(restored) == [1] and nb.cells[1].source == "check.a(f)"
    nb.cells[0].outputs = [_displayed("a", True)]  # outside any check cell
    nb.cells[2].outputs = [_displayed("a", True)]  # in the copy
    assert grading.check_results(nb, restored) == {}
    nb.cells[1].outputs = [_displayed("a", True), _displayed("b", True), _displayed("a", False)]
    assert grading.check_results(nb, restored) == {"a": {"check": "a", "passed": False}}


def test_unknown_lesson_is_invalid_without_running(tmp_path):
    row = grading.grade(tmp_path / "notes.ipynb", timeout=1)
    assert (row["status"], row["score"], row["max_score"]) == ("invalid", 0.0, 0.0)
    assert "NN_" in row["message"]
