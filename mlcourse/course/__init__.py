"""The course around the package: this module holds its address and the fast mode that CI uses
to execute every notebook quickly; beside it live the tools that run the course.

- :mod:`~mlcourse.course.cli`: the ``mlcourse`` command line.
- :mod:`~mlcourse.course.checks`: the exercises' autograded checks; :mod:`~mlcourse.course.grading`
  and :mod:`~mlcourse.course.sandbox` grade submissions with them, and
  :mod:`~mlcourse.course.check_protocol` carries a check's result to the grader.
- :mod:`~mlcourse.course.release`: exercises, Colab badges and setup cells from the lessons.
- :mod:`~mlcourse.course.widgets` and :mod:`~mlcourse.course.diagrams`: what the lessons draw.
- :mod:`~mlcourse.course.doctor`, :mod:`~mlcourse.course.bench` and
  :mod:`~mlcourse.course.timings`: is this machine ready, how fast is it, how long is each lesson.
"""

from __future__ import annotations

import os
import re

# The course's repository, the one place that names it: the setup cell installs mlcourse from
# it (on Colab) and the "Open in Colab" badges point into it. `mlcourse release` stamps both
# into every notebook; `mlcourse release --repo OWNER/NAME` moves the course to a fork,
# rewriting this line, every badge and setup cell and the README's Colab links.
REPO = "meta-learning-course/mlcourse"
BRANCH = "main"
REPO_URL = f"https://github.com/{REPO}"
INSTALL_SPEC = f"mlcourse @ git+{REPO_URL}.git@{BRANCH}"

_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}"
_NAME = r"[A-Za-z0-9._-]{1,100}"


def check_repo(repo: str) -> str:
    """``repo`` when it names a GitHub repository as ``OWNER/NAME``.

    Raises:
        ValueError: it does not, with what to write instead.

    Example:
        >>> check_repo("my-university/mlcourse")
        'my-university/mlcourse'
    """
    text = repo.strip()
    if text.startswith(("https://", "http://", "github.com/", "git@")) or text.endswith(".git"):
        hint = "give only OWNER/NAME, without https://github.com/ or .git"
    elif re.fullmatch(rf"{_OWNER}/{_NAME}", text) and text.split("/")[1] not in (".", ".."):
        return text
    else:
        hint = (
            "OWNER is letters, digits and single hyphens (at most 39), NAME letters, digits, "
            "'.', '-' and '_'"
        )
    raise ValueError(
        f"--repo {repo!r} is not a GitHub repository written OWNER/NAME, e.g. "
        f"my-university/mlcourse: {hint}"
    )


def install_spec(repo: str = REPO) -> str:
    """What the setup cell gives ``pip install``: the course from ``repo``'s main branch.

    Example:
        >>> install_spec("me/fork")
        'mlcourse @ git+https://github.com/me/fork.git@main'
    """
    return f"mlcourse @ git+https://github.com/{repo}.git@{BRANCH}"


def colab_url(path: str, repo: str = REPO) -> str:
    """The "Open in Colab" address of a notebook, e.g. ``colab_url("notebooks/02_maml.ipynb")``."""
    return f"https://colab.research.google.com/github/{repo}/blob/{BRANCH}/{path}"


def fast_mode() -> bool:
    """True when ``MLCOURSE_FAST=1``: budgets shrink, code paths stay the same."""
    return os.environ.get("MLCOURSE_FAST") == "1"


def budget(full, fast):
    """``full`` normally, ``fast`` in fast mode (e.g. ``steps = budget(5000, 50)``).

    Example:
        >>> budget(5000, 50) in (5000, 50)
        True
    """
    return fast if fast_mode() else full
