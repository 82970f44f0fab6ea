"""The course website: Sphinx with myst-nb and sphinx-book-theme (`make site`).

The source folder is the repository root, so that the notebooks' own relative links (e.g.
``../docs/reproductions.md``) resolve on the site as they do on GitHub; this folder holds the
configuration, the home page and the API reference. ``include_patterns`` below says which files
become pages: the lessons (executed during the build), the exercises (shown as released, not
executed), the README files, the reproduction report and the API reference.

The lessons run in fast mode (``MLCOURSE_FAST=1``) unless the environment says
``MLCOURSE_FAST=0`` (``make site FULL=1``). Outputs come from this build's own execution, kept
in a jupyter-cache folder per mode (``SITE_EXECUTION_CACHE``); the notebooks' committed outputs,
if any, are never shown.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))

FAST = os.environ.get("MLCOURSE_FAST", "1") == "1"
os.environ["MLCOURSE_FAST"] = "1" if FAST else "0"  # the kernels inherit it

import mlcourse  # noqa: E402
import mlcourse.course  # noqa: E402

# -- Project ------------------------------------------------------------------------------------

project = "Meta-learning and meta-RL: an interactive course"
author = "The mlcourse authors"
copyright = "the mlcourse authors, MIT licence"
release = version = mlcourse.__version__

# the address `mlcourse release --repo OWNER/NAME` moves, so that a fork's site points to the fork
REPOSITORY, BRANCH = mlcourse.course.REPO_URL, mlcourse.course.BRANCH
COLAB = mlcourse.course.colab_url("").rstrip("/")

root_doc = "docs/index"
include_patterns = [
    "README.md",
    "docs/**",
    "notebooks/README.md",
    "notebooks/[0-9][0-9]_*.ipynb",
    "exercises/README.md",
    "exercises/[0-9][0-9]_*.ipynb",
    "solutions/open_questions/*.md",  # the lessons link their open questions' answer sketches
]
exclude_patterns = [
    ".venv",
    ".git",
    "docs/_build",
    "docs/_ext",
    "docs/_static",
    "docs/_templates",
    "**/.ipynb_checkpoints",
    "runs",
    "solutions/*.ipynb",
    "mlcourse",
    "tests",
]
templates_path = [str(DOCS / "_templates")]  # absolute: autosummary reads it from the source folder

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "coursepages",
]

# -- Warnings: every one fails the build (`-W --keep-going` in the Makefile) -------------------

nitpicky = True
nitpick_ignore_regex = [
    # No intersphinx inventory offline: names from other libraries cannot link.
    (r"py:.*", r"(torch|nn|numpy|np|matplotlib|gymnasium|ipywidgets|IPython)(\..*)?"),
    (r"py:.*", r"jupyter_client(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Generator|Figure|Axes|Env|VectorEnv|Space|ndarray|dtype|device)"),
    (r"py:.*", r"(pathlib\.)?Path|collections\.abc\..*|typing\..*|Callable|Iterable|Iterator"),
    (r"py:.*", r"(abc|argparse|os|io|subprocess|json|dataclasses)\..*"),
    # Napoleon's "(optional int)" argument types; private base classes, which are not documented.
    (r"py:class", r"optional .*"),
    (r"py:class", r"mlcourse\..*\._\w+"),
]
# References in the package's docstrings to names the API reference does not document (module
# constants, type aliases, private helpers, names without their module); reported to the
# package's authors. A new broken reference still fails the build.
nitpick_ignore = [
    ("py:func", "_forbidden"),  # mlcourse.course.checks.check
    ("py:func", "main"),  # mlcourse.course.timings (module docstring)
    ("py:meth", "reset"),  # the environments' class docstrings; their reset has no docstring
    ("py:data", "ENVS"),  # mlcourse.algorithms.metagenrl.Agent
    ("py:data", "EVAL_SEED"),  # mlcourse.algorithms.unified.compare
    ("py:attr", "value"),  # mlcourse.rl.bandits.BayesOptimal
    ("py:data", "BanditPolicy"),  # mlcourse.rl.bandits.bandit_returns
    ("py:mod", "mlcourse.tasks.episodes"),  # mlcourse.tasks.characters.ProceduralCharacters.sample
    ("py:exc", "OmniglotError"),  # mlcourse.tasks.omniglot.download_omniglot, load_omniglot
]

# -- Markdown and notebooks (myst-parser, myst-nb) ---------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3  # README and report link to sections by their GitHub slugs

nb_execution_mode = "cache"
nb_execution_cache_path = str(
    ROOT
    / os.environ.get(
        "SITE_EXECUTION_CACHE", DOCS / "_build" / f".jupyter_cache-{'fast' if FAST else 'full'}"
    )
)
nb_execution_excludepatterns = ["exercises/*"]  # shown as released: the learner runs them
nb_execution_timeout = 300 if FAST else 3600  # seconds per cell (nbclient's timeout)
nb_execution_raise_on_error = True  # a lesson that raises fails the build
nb_execution_show_tb = True
nb_merge_streams = True
# A check's result also carries a JSON payload for the grader (application/vnd.mlcourse.check+json)
# beside its HTML, which is what the page shows. An output with nothing showable still warns.
suppress_warnings = ["mystnb.unknown_mime_type"]
nb_ipywidgets_js: dict = {}  # no widget manager from a CDN: widgets show their static picture

# -- API reference -----------------------------------------------------------------------------

autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # Gymnasium's own docstrings are not ours to render
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# The package's "Returns:" sections are prose ("A summary dict: ``experiment, step, ...``"), not
# napoleon's "type: description": render them as written, under a "Returns" heading.
napoleon_custom_sections = [("Returns", "returns_as_prose"), ("Yields", "yields_as_prose")]

# -- HTML ------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = "Meta-learning and meta-RL"
# MathJax 3 served from the site itself, never from a CDN: the Makefile fetches it from the npm
# registry into SITE_MATHJAX/mathjax/. tex-svg draws glyphs as paths: no web fonts to load.
MATHJAX = ROOT / os.environ.get("SITE_MATHJAX", DOCS / "_build" / "mathjax-3.2.2" / "static")
if not (MATHJAX / "mathjax" / "tex-svg.js").is_file():
    raise RuntimeError(f"no MathJax in {MATHJAX}/mathjax: build the site with `make site`")
html_static_path = ["_static", str(MATHJAX)]
mathjax_path = "mathjax/tex-svg.js"
html_css_files = ["course.css"]
html_additional_pages = {"index": "root-redirect.html"}  # the site's /index.html
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
html_theme_options = {
    "repository_url": REPOSITORY,
    "repository_branch": BRANCH,
    "path_to_docs": "",
    "use_repository_button": True,
    "use_source_button": True,
    "use_download_button": True,
    "launch_buttons": {"colab_url": "https://colab.research.google.com"},
    "show_toc_level": 2,
    "home_page_in_toc": True,
}

# Read by the coursepages extension.
course_repository = REPOSITORY
course_branch = BRANCH
course_colab = COLAB
course_fast = FAST
