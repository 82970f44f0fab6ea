"""Course-wide constants and the fast mode that CI uses to execute every notebook quickly."""

from __future__ import annotations

import os

# The course's repository: the setup cell installs mlcourse from it (on Colab) and the
# "Open in Colab" badges point into it. `mlcourse release` stamps both into every notebook.
REPO = "meta-learning-course/mlcourse"
BRANCH = "main"
REPO_URL = f"https://github.com/{REPO}"
INSTALL_SPEC = f"mlcourse @ git+{REPO_URL}.git@{BRANCH}"


def colab_url(path: str) -> str:
    """The "Open in Colab" address of a notebook, e.g. ``colab_url("notebooks/02_maml.ipynb")``."""
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/{path}"


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


if __name__ == "__main__":  # python -m mlcourse.course timings [...]
    import sys

    if sys.argv[1:2] != ["timings"]:
        sys.exit("usage: python -m mlcourse.course timings [NOTEBOOK...] [--mode full|fast|both]")
    from mlcourse.timings import main

    sys.exit(main(sys.argv[2:]))
