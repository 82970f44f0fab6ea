"""mlcourse: the package behind the meta-learning and meta-RL course.

Its folders are its layers, each importing only from the ones above it:

- :mod:`mlcourse.options`, :mod:`mlcourse.runtime`, :mod:`mlcourse.stats`,
  :mod:`mlcourse.validation`, :mod:`mlcourse.profiling`: small helpers every layer shares.
- :mod:`mlcourse.tasks` and :mod:`mlcourse.envs`: the supervised task families and the
  reinforcement-learning environments; :mod:`mlcourse.models`: the networks.
- :mod:`mlcourse.rl`: reinforcement learning's own pieces (returns, PPO, DiCE, policies) and the
  classical bandit and MDP baselines.
- :mod:`mlcourse.algorithms`: the meta-learning algorithms as functions of parameters and tasks.
- :mod:`mlcourse.experiments`: configs, learners, the training loop and evaluation, one
  registry; :mod:`mlcourse.pretrained`: the agents the course ships.
- :mod:`mlcourse.course`: the command line, the checks, grading, releases and what the lessons
  draw.

Lessons import it; ``docs/extending.md`` shows where a new algorithm goes.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Where modules lived before the package was grouped into layers. Notebooks released before then
# import the old names (``from mlcourse import checks as check``, ``from mlcourse.training import
# default_device``): they still run, and still grade, against this version.
MOVED = {
    **{
        f"mlcourse.{m}": f"mlcourse.algorithms.{m}"
        for m in (
            "cavia",
            "fewshot",
            "maml",
            "maml_rl",
            "metagenrl",
            "metasgd",
            "reptile",
            "rl2",
            "unified",
        )
    },
    **{
        f"mlcourse.{m}": f"mlcourse.course.{m}"
        for m in (
            "bench",
            "check_protocol",
            "checks",
            "cli",
            "diagrams",
            "doctor",
            "grading",
            "release",
            "sandbox",
            "timings",
            "widgets",
        )
    },
    "mlcourse.training": "mlcourse.experiments.training",
}


def _new_name(fullname: str) -> str | None:
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a module by its old name as the very module at its new one."""

    def __init__(self):
        self._specs = {}

    def find_spec(self, fullname, path=None, target=None):
        new = _new_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=False)

    def create_module(self, spec):
        module = importlib.import_module(_new_name(spec.name))
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # The module at the new name has run already; importing by the old name only replaced
        # its spec, which is put back so it keeps its one name.
        spec = self._specs.pop(module.__spec__.name)
        module.__spec__, module.__loader__ = spec, spec.loader


sys.meta_path.insert(0, _MovedModules())  # before the path finder, which would load a second copy


def __getattr__(name: str):  # ``from mlcourse import maml``, ``mlcourse.checks``
    if f"mlcourse.{name}" in MOVED:
        return importlib.import_module(f"mlcourse.{name}")
    raise AttributeError(f"module 'mlcourse' has no attribute {name!r}")
