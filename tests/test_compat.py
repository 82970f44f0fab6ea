"""The course where instructors run it: Colab's preinstalled packages (ipywidgets 7 among them)
and the oldest versions ``pyproject.toml`` admits.

The tests marked ``compat`` build and use the environments of ``tools/compat.py`` (minutes and
gigabytes the first time) and run only under ``make compat``; the others run everywhere,
including inside those environments, where they meet ipywidgets 7.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compat", ROOT / "tools" / "compat.py")
compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compat)

# What the package tests inside an environment leave out: they need the development extras
# (JupyterLab and Playwright, Sphinx, nbgrader), which Colab does not have.
NEEDS_DEV_EXTRAS = ("tests/test_browser.py", "tests/test_site.py", "tests/test_nbgrader.py")
# And what a CUDA build of torch cannot pass: the grader's memory test gives the lesson's kernel
# 3 GB of address space, and a lesson kernel that maps torch's CUDA libraries needs more
# ("libtorch_cuda.so: failed to map segment"). PyPI's torch, which stands in for Colab's
# 2.11.0+cpu and is the only torch 2.4 there is for Linux, is such a build.
NEEDS_A_CPU_BUILD_OF_TORCH = (
    "tests/test_grade_attacks.py::test_a_submission_cannot_exhaust_memory_or_fill_the_log",
)


def _pinned(env: str) -> dict[str, str]:
    return dict(
        (compat.canonical(name), version)
        for name, version in (p.split("==") for p in compat.pins(env))
    )


# ---------------------------------------------------------------- everywhere (cheap) --------


def _ipywidgets_own_bundle(widget, monkeypatch) -> dict:
    """What the installed ipywidgets itself publishes for ``widget``: 8 returns it from
    ``_repr_mimebundle_``, 7 passes it to ``display`` from ``_ipython_display_``."""
    import ipywidgets

    if hasattr(type(widget), "_repr_mimebundle_"):
        return widget._repr_mimebundle_()
    published = []
    monkeypatch.setattr(
        ipywidgets.widgets.widget, "display", lambda data, raw: published.append(data)
    )
    widget._ipython_display_()
    return published[0]


def test_interact_publishes_what_ipywidgets_publishes_and_the_static_figure(monkeypatch):
    """ipywidgets 7 (Colab) and 8 both: the widget view ipywidgets itself would publish for the
    box, plus the default figure as a PNG for front ends without a kernel."""
    import matplotlib.pyplot as plt
    from ipywidgets import IntSlider

    from mlcourse.course import widgets

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda data, raw: shown.append(data))

    def draw(n):
        fig, ax = plt.subplots()
        ax.plot(range(n))
        return fig

    box = widgets.interact(draw, n=IntSlider(value=3, min=1, max=5))
    (bundle,) = shown
    assert set(bundle) == {"text/plain", widgets.WIDGET_VIEW, "image/png"}
    own = _ipywidgets_own_bundle(box, monkeypatch)
    assert {k: bundle[k] for k in own} == own
    assert bundle[widgets.WIDGET_VIEW]["model_id"] == box.model_id
    before = box.children[-1].value
    box.children[0].value = 5  # the slider redraws the live figure
    assert box.children[-1].value != before


def test_colab_pins_each_name_a_version_and_its_source():
    lines = [
        line
        for line in compat.COLAB_CONSTRAINTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines
    for line in lines:
        pin, _, source = line.partition("#")
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", pin.strip()), line
        assert re.search(r"Colab \d{4}-\d{2}-\d{2}", source), f"{line}: say where it comes from"
    names = [compat.canonical(p.split("==")[0]) for p in compat.pins("colab")]
    assert len(names) == len(set(names)), "a package pinned twice"


def test_the_declared_bounds_admit_colabs_versions():
    """The setup cell keeps what Colab has: every dependency is pinned at Colab's version and
    that version satisfies what ``pyproject.toml`` asks for (the dry run under ``make compat``
    proves it with pip itself)."""
    colab = _pinned("colab")
    for text in compat.declared_dependencies():
        requirement = Requirement(text)
        version = colab.get(compat.canonical(requirement.name))
        assert version is not None, f"{requirement.name}: pin Colab's version"
        assert requirement.specifier.contains(version, prereleases=True), (text, version)


def test_minimum_pins_are_the_declared_lower_bounds():
    pins = compat.minimum_pins()
    assert len(pins) == len(compat.declared_dependencies())
    for pin, text in zip(pins, compat.declared_dependencies(), strict=True):
        requirement = Requirement(text)
        name, version = pin.split("==")
        assert name == requirement.name
        assert str(requirement.specifier) == f">={version}"
    assert doctest.testmod(compat).failed == 0


@pytest.mark.parametrize("requirement", ["torch", "torch<3", "torch>=2.4,<3", "torch==2.4"])
def test_a_bound_that_cannot_be_tested_is_refused(requirement):
    with pytest.raises(ValueError, match="name>=version"):
        compat.minimum_pins([requirement])


def test_a_malformed_pin_is_refused():
    with pytest.raises(ValueError, match="one `name==version` per line"):
        compat.pin_lines("numpy>=2\n")


# ------------------------------------------------------ make compat (slow, networked) --------


def _run_in(
    env: str, args: list[str], **env_vars: str
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(compat.python(env)), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env_vars},
    )
    return result, time.monotonic() - started


def _summary(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def _say(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}", flush=True)


@pytest.fixture(scope="module", params=compat.ENVS)
def env(request):
    compat.build(request.param)
    return request.param


@pytest.mark.compat
def test_the_environment_holds_its_pinned_versions(env, capsys):
    held = compat.installed(env)
    wrong = {
        name: (version, held.get(name))
        for name, version in _pinned(env).items()
        if held.get(name) is None or Version(Version(held[name]).public) != Version(version)
    }
    assert not wrong, f"{env}: pinned -> installed: {wrong}"
    assert "mlcourse" in held
    names = [compat.canonical(Requirement(r).name) for r in compat.declared_dependencies()]
    versions = ", ".join(f"{name} {held[name]}" for name in [*names, "ipython", "pip"])
    _say(capsys, f"{env}: Python {sys.version.split()[0]}, {versions}")


@pytest.mark.compat
def test_installing_the_course_on_colab_changes_none_of_colabs_packages(capsys):
    """The setup cell's ``%pip install`` run as ``pip install --dry-run --report`` in an
    environment holding Colab's versions: it installs the course and, at most, packages Colab
    lacks; it upgrades or downgrades nothing Colab has."""
    compat.build("colab")
    changes = compat.dry_run("colab")
    names = [c["name"] for c in changes]
    assert "mlcourse" in names
    touched = [c for c in changes if c["installed"] is not None and c["name"] != "mlcourse"]
    assert not touched, f"the setup cell would change: {touched}"
    assert not set(names) & set(_pinned("colab")), "a package Colab has would be reinstalled"
    listed = ", ".join(f"{c['name']} {c['version']}" for c in changes)
    _say(capsys, f"colab: pip install --dry-run would install: {listed}")
    # the same check on what the course asked for before (ipywidgets>=8) sees the upgrade
    control = compat.dry_run("colab", "ipywidgets>=8")
    assert [(c["name"], c["installed"]) for c in control if c["name"] == "ipywidgets"] == [
        ("ipywidgets", _pinned("colab")["ipywidgets"])
    ]


@pytest.mark.compat
def test_the_package_tests_pass(env, capsys):
    ignore = [f"--ignore={path}" for path in NEEDS_DEV_EXTRAS]
    if any(name.startswith("nvidia-cuda-runtime") for name in compat.installed(env)):
        ignore += [f"--deselect={test}" for test in NEEDS_A_CPU_BUILD_OF_TORCH]
    result, seconds = _run_in(env, ["-m", "pytest", "-q", "-p", "no:cacheprovider", *ignore])
    _say(capsys, f"{env}: package tests: {_summary(result)} ({seconds:.0f} s wall)")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


@pytest.mark.compat
def test_every_lesson_runs_in_fast_mode(env, capsys):
    report = compat.COMPAT / env / "lessons.xml"
    report.unlink(missing_ok=True)
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env"]
    result, seconds = _run_in(env, [*args, f"--junitxml={report}", "notebooks/"], MLCOURSE_FAST="1")
    ran = {case.get("classname") for case in ElementTree.parse(report).iter("testcase")}
    lessons = {f"notebooks.{path.name}" for path in (ROOT / "notebooks").glob("*.ipynb")}
    _say(
        capsys,
        f"{env}: lessons (fast mode): {len(ran & lessons)} of {len(lessons)} lessons, "
        f"{_summary(result)} ({seconds:.0f} s wall)",
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert ran == lessons, f"lessons that did not run: {sorted(lessons - ran)}"
