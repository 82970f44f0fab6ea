"""Every solution runs top to bottom in fast mode with every check passing; every exercise runs
with its checks answering ❌ instead of crashing; nothing is committed with outputs; the
exercises are up to date. Notebooks added later are picked up from disk.

The lessons themselves (notebooks/) are executed by nbval in fast mode: `make test` runs
``MLCOURSE_FAST=1 pytest --nbval-lax --nbval-current-env notebooks/``."""

import json
import os
from pathlib import Path

import nbformat
import pytest

from mlcourse.course import grading, release

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds per notebook in fast mode


def _found(folder):
    return sorted((ROOT / folder).glob("*.ipynb"))


def _id(path):
    return f"{path.parent.name}/{path.name}"


def _run(path, tmp_path):
    """Executes a notebook in its folder, in fast mode; returns it, its status and the results
    its released check cells displayed (as the grader reads them)."""
    nb = nbformat.read(path, as_version=4)
    restored = grading.restore_check_cells(nb, grading.released_check_cells(path.stem))
    env = {**os.environ, "MLCOURSE_FAST": "1"}
    status, message = grading.execute_notebook(nb, timeout=TIMEOUT, env=env, cwd=path.parent)
    return nb, status, message, grading.check_results(nb, restored)


def _errors(nb):
    return [
        f"cell {i}: {o.ename}: {o.evalue}"
        for i, cell in enumerate(nb.cells)
        for o in cell.get("outputs", [])
        if o.output_type == "error"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", _found("solutions"), ids=_id)
def test_solution_runs_with_every_check_passing(path, tmp_path):
    nb, status, message, records = _run(path, tmp_path)
    assert status == "ok", f"{message}\n" + "\n".join(_errors(nb))
    if path.parent.name == "solutions":
        checks = grading.lesson_checks(path.stem)
        assert checks, f"mlcourse.course.checks defines no check for lesson {path.stem}"
        failed = {n: records.get(n, {}).get("message", "never ran") for n in checks}
        failed = {n: m for n, m in failed.items() if not records.get(n, {}).get("passed")}
        assert not failed, f"checks not passing in the solution: {failed}"


@pytest.mark.slow
@pytest.mark.parametrize("path", _found("exercises"), ids=_id)
def test_exercise_checks_answer_not_implemented_instead_of_crashing(path, tmp_path):
    nb, status, message, records = _run(path, tmp_path)
    assert status in ("ok", "error"), message  # a top-level stub may raise; no hang, no death
    for i, cell in enumerate(nb.cells):
        if cell.metadata.get("nbgrader", {}).get("grade"):
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"check cell {i} crashed: {errors[0].ename}: {errors[0].evalue}"
    for name in grading.lesson_checks(path.stem):
        assert name in records, f"check.{name} never ran"
        assert records[name]["passed"] is False, f"check.{name} passes an untouched exercise"


def _all_notebooks():
    """The notebooks the repository holds (git's list; build outputs such as the site's
    execution cache are not committed)."""
    import subprocess

    try:
        listed = subprocess.run(
            ["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every notebook
        skip = {".venv", ".ipynb_checkpoints", "node_modules", ".git", "_build", "build"}
        return sorted(p for p in ROOT.rglob("*.ipynb") if not skip & set(p.relative_to(ROOT).parts))
    return sorted(ROOT / name for name in listed)


@pytest.mark.parametrize("path", _all_notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_outputs_committed(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert not cell["outputs"], f"cell {i} has outputs: run `mlcourse release`"
            assert cell["execution_count"] is None, f"cell {i} has an execution count"


def test_release_check_passes():
    changed, orphans = release.release(ROOT, check=True)
    stale = [str(p.relative_to(ROOT)) for p in changed + orphans]
    assert not stale, f"out of date: {stale}; run `mlcourse release`"
