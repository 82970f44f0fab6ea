"""The course's notebooks in a real nbgrader course folder: generate_assignment, autograde,
export and generate_feedback, with the scores nbgrader gives each check.

The student version nbgrader makes from ``solutions/`` must be the course's own ``exercises/``
notebook (sources and metadata), and autograding must score a solution full, an untouched
exercise 0, a wrong answer 0 on its check, and a correct answer whose code warns full (nbgrader
gives a grade cell that writes to stderr no points).
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mlcourse.course import release

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LESSON = "00_welcome"
BIN = Path(sys.executable).parent


def nbgrader(course: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # it runs alembic
    proc = subprocess.run(
        [str(BIN / "nbgrader"), *args],
        cwd=course,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def submissions(released) -> dict:
    solution = nbformat.read(ROOT / "solutions" / f"{LESSON}.ipynb", as_version=4)
    wrong = nbformat.from_dict(released)
    _cell(
        wrong, "per_task_mse"
    ).source = (
        "def per_task_mse(y_pred, y_true):\n    return ((y_pred - y_true) ** 2).mean()  # one loss"
    )
    warns = nbformat.read(ROOT / "solutions" / f"{LESSON}.ipynb", as_version=4)
    cell = _cell(warns, "per_task_mse")
    cell.source = cell.source.replace(
        "def per_task_mse(y_pred, y_true):",
        "def per_task_mse(y_pred, y_true):\n"
        "    import warnings\n\n"
        "    import torch\n\n"
        "    warnings.warn('checking shapes', UserWarning, stacklevel=1)\n"
        "    torch.tensor(y_pred)  # torch warns too: copy-constructing from a tensor",
    )
    return {"solution": solution, "untouched": released, "wrong": wrong, "warns": warns}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'mlcourse'\n"
        f"c.CourseDirectory.db_url = 'sqlite:///{course / 'gradebook.db'}'\n"
    )
    source = course / "source" / LESSON
    source.mkdir(parents=True)
    (source / f"{LESSON}.ipynb").write_bytes((ROOT / "solutions" / f"{LESSON}.ipynb").read_bytes())
    logs = {"generate": nbgrader(course, "generate_assignment", LESSON, "--force")}
    released = nbformat.read(course / "release" / LESSON / f"{LESSON}.ipynb", as_version=4)
    for student, nb in submissions(released).items():
        folder = course / "submitted" / student / LESSON
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{LESSON}.ipynb")
    logs["autograde"] = nbgrader(course, "autograde", LESSON, "--create", "--force")
    logs["export"] = nbgrader(course, "export")
    logs["feedback"] = nbgrader(course, "generate_feedback", LESSON, "--force")
    return course, released, logs


def test_nbgraders_student_version_is_the_courses_exercise(course):
    _, released, _ = course
    exercise = nbformat.read(ROOT / "exercises" / f"{LESSON}.ipynb", as_version=4)
    assert [c.source for c in released.cells] == [c.source for c in exercise.cells]
    assert [dict(c.metadata) for c in released.cells] == [dict(c.metadata) for c in exercise.cells]
    assert not any("solutions/" in c.source for c in released.cells)


def test_autograde_scores_each_check(course):
    folder, _, logs = course
    from nbgrader.api import Gradebook

    expected = {  # student -> {check cell: points}
        "solution": {"check_support_query_split": 1.0, "check_per_task_mse": 1.0},
        "untouched": {"check_support_query_split": 0.0, "check_per_task_mse": 0.0},
        "wrong": {"check_support_query_split": 0.0, "check_per_task_mse": 0.0},
        "warns": {"check_support_query_split": 1.0, "check_per_task_mse": 1.0},
    }
    with Gradebook(f"sqlite:///{folder / 'gradebook.db'}", "mlcourse") as gb:
        got = {
            student: {
                grade_id: gb.find_grade(grade_id, LESSON, LESSON, student).score
                for grade_id in checks
            }
            for student, checks in expected.items()
        }
    assert got == expected
    assert "cannot be converted to a float" not in logs["autograde"]


def test_export_and_feedback(course):
    folder, _, _ = course
    with open(folder / "grades.csv", newline="") as fh:
        rows = {row["student_id"]: float(row["score"]) for row in csv.DictReader(fh)}
    assert rows == {"solution": 2.0, "untouched": 0.0, "wrong": 0.0, "warns": 2.0}
    for student in rows:
        page = folder / "feedback" / student / LESSON / f"{LESSON}.html"
        assert page.is_file() and "support_query_split" in page.read_text()


def test_the_exercise_check_cells_cannot_be_deleted_or_edited():
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader")
            if meta is None:
                continue
            assert cell.metadata["deletable"] is False, path.name
            assert meta["checksum"] == release.nbgrader_checksum(cell), path.name
            if meta["grade"]:
                assert cell.metadata["editable"] is False, path.name
