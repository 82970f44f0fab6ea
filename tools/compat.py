"""`make compat`: the course in the environments it is run in, beside the development one.

Two virtual environments under ``build/compat/``, each built once and rebuilt when what
defines it changes (its pins, ``pyproject.toml``'s dependencies, the Python that builds it):

* ``colab``: Colab's preinstalled versions (``tests/colab-constraints.txt``, ipywidgets 7.7.1
  among them), then the test tools, then the course installed as its setup cell installs it.
* ``minimum``: every dependency ``pyproject.toml`` declares at the lowest version it admits
  (``name>=X`` installed as ``name==X``), with the test tools.

``tests/test_compat.py`` (``make compat``) runs the package tests and every lesson in fast mode
in each, and proves with ``pip install --dry-run --report`` that installing the course into
the ``colab`` environment changes none of Colab's packages.

    python tools/compat.py [ENV...]        build (or check) the environments, say what they hold
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / "build" / "compat"
COLAB_CONSTRAINTS = ROOT / "tests" / "colab-constraints.txt"
ENVS = ("colab", "minimum")
# What runs the tests inside each environment (not part of the course's own requirements).
TEST_TOOLS = ("pytest", "nbval")
PIP_QUIET = ("--quiet", "--disable-pip-version-check", "--progress-bar", "off")
# What a first build of each took here (2 cores, a fast network), so that it can say so.
FIRST_BUILD = "about 5 GB on disk, PyTorch's CUDA libraries most of it; 2 to 5 minutes here"


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503): ``Jinja2`` -> ``jinja2``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pin_lines(text: str) -> list[str]:
    """The ``name==version`` lines of a constraints file, comments and blank lines dropped."""
    pins = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*==[A-Za-z0-9_.+!\-]+", line):
                raise ValueError(f"{line!r}: a compatibility pin is one `name==version` per line")
            pins.append(line)
    return pins


def declared_dependencies() -> list[str]:
    """``pyproject.toml``'s ``[project] dependencies``, as written."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def minimum_pins(dependencies: list[str] | None = None) -> list[str]:
    """Each dependency at the lowest version it admits: ``torch>=2.4`` -> ``torch==2.4``.

    Raises:
        ValueError: a dependency is not declared as ``name>=version`` (the only form whose
            lowest version is one release that can be installed and tested).

    Example:
        >>> minimum_pins(["numpy>=1.24", "ipywidgets >= 7.6"])
        ['numpy==1.24', 'ipywidgets==7.6']
    """
    lower_bound = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*>=\s*([0-9][0-9.]*)\s*")
    pins = []
    for requirement in declared_dependencies() if dependencies is None else dependencies:
        match = lower_bound.fullmatch(requirement)
        if match is None:
            raise ValueError(
                f"{requirement!r}: declare each dependency as name>=version, the lowest version "
                "`make compat` installs and tests"
            )
        pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


def pins(env: str) -> list[str]:
    """The pins that define environment ``env`` (one of :data:`ENVS`)."""
    if env == "colab":
        return pin_lines(COLAB_CONSTRAINTS.read_text())
    if env == "minimum":
        return minimum_pins()
    raise ValueError(f"unknown environment {env!r}: choose from {', '.join(ENVS)}")


def python(env: str) -> Path:
    """The Python interpreter of environment ``env``."""
    return COMPAT / env / "bin" / "python"


def _fingerprint(env: str) -> str:
    what = {
        "pins": pins(env),
        "dependencies": declared_dependencies(),
        "tools": TEST_TOOLS,
        "python": sys.version,
        "builder": inspect.getsource(build),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _run(args: list[str], what: str) -> None:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}):\n$ {' '.join(args)}\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


def _pip(env: str, *args: str, what: str) -> None:
    _run([str(python(env)), "-m", "pip", *args[:1], *PIP_QUIET, *args[1:]], what)


def build(env: str, log=print) -> Path:
    """Creates environment ``env`` under ``build/compat/`` unless it is up to date; returns its
    Python. The course is installed editable (``-e .``) under the environment's pins, so the
    tests and lessons run this checkout's code with the pinned versions of everything else.

    Raises:
        RuntimeError: a step failed; the message holds pip's output.
    """
    folder = COMPAT / env
    stamp = folder / ".built"
    fingerprint = _fingerprint(env)
    if stamp.is_file() and stamp.read_text() == fingerprint and python(env).is_file():
        return python(env)
    started = time.monotonic()
    log(
        f"compat: building the {env} environment in {folder.relative_to(ROOT)}/ (first time: "
        f"{FIRST_BUILD}) ..."
    )
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _run([sys.executable, "-m", "venv", str(folder)], f"creating {folder}")
    constraints = folder / "constraints.txt"
    constraints.write_text("\n".join(pins(env)) + "\n")
    c = ("-c", str(constraints))
    pip_pin = [p for p in pins(env) if canonical(p.split("==")[0]) == "pip"]
    if pip_pin:  # the installer of the environment being copied (Colab's pip)
        _pip(env, "install", *pip_pin, what=f"{env}: installing {pip_pin[0]}")
    log(f"compat: {env}: installing {len(pins(env))} pinned packages ...")
    _pip(env, "install", *c, *pins(env), what=f"{env}: installing the pinned packages")
    _pip(env, "install", *c, *TEST_TOOLS, what=f"{env}: installing the test tools")
    log(f"compat: {env}: installing the course (-e .) ...")
    _pip(env, "install", *c, "-e", str(ROOT), what=f"{env}: installing the course")
    stamp.write_text(fingerprint)
    log(f"compat: {env} built in {time.monotonic() - started:.0f} s")
    return python(env)


def installed(env: str) -> dict[str, str]:
    """``{canonical name: version}`` of every distribution in environment ``env``."""
    out = subprocess.run(
        [str(python(env)), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {canonical(d["name"]): d["version"] for d in json.loads(out)}


def dry_run(env: str, requirement: str = str(ROOT)) -> list[dict]:
    """What ``pip install REQUIREMENT`` would install into environment ``env``, from pip's own
    ``--dry-run --report``: ``[{"name", "version", "installed": version or None}]``, where
    ``installed`` is the version the environment holds now (an upgrade or downgrade when it
    differs)."""
    before = installed(env)
    report = COMPAT / env / "dry-run.json"
    _pip(
        env,
        "install",
        "--dry-run",
        "--report",
        str(report),
        requirement,
        what=f"{env}: pip install --dry-run {requirement}",
    )
    changes = []
    for item in json.loads(report.read_text())["install"]:
        name = canonical(item["metadata"]["name"])
        changes.append(
            {"name": name, "version": item["metadata"]["version"], "installed": before.get(name)}
        )
    return changes


def main(argv: list[str]) -> int:
    unknown = [env for env in argv if env not in ENVS]
    if unknown:
        print(f"usage: python tools/compat.py [{' '.join(ENVS)}]; unknown: {unknown}")
        return 2
    for env in argv or ENVS:
        build(env)
        held = installed(env)
        names = [canonical(re.split(r"[<>=]", r)[0]) for r in declared_dependencies()]
        listed = ", ".join(f"{n} {held.get(n, 'missing')}" for n in [*names, "ipython", "pip"])
        print(f"compat: {env} ({python(env).relative_to(ROOT)}): {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
