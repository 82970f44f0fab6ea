"""The package's folders are its layers (README, docs/extending.md): each module imports, at
module level, only from its own layer and the ones before it; and the modules' old names, from
before the folders, still import the very same modules, so notebooks released earlier still run
and grade."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import mlcourse

PACKAGE = Path(mlcourse.__file__).parent
LAYERS = (  # in order: a layer may import from itself and the ones before it
    ("helpers", ("options", "runtime", "stats", "validation", "profiling")),
    ("tasks, environments, networks, RL pieces", ("tasks", "envs", "models", "rl")),
    ("algorithms", ("algorithms",)),
    ("experiments", ("experiments", "pretrained")),
    ("course", ("course",)),
)


def _layer(module: str) -> int:
    top = module.split(".")[1]
    for rank, (_, members) in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(f"{module} is in no layer: add mlcourse.{top} to LAYERS and the README")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) > 1 and parts[1] != "__main__":
            yield ".".join(parts), path


def _module_level_imports(path: Path):
    """``mlcourse.*`` modules imported outside functions (those inside run only when called)."""
    for node in ast.parse(path.read_text("utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mlcourse":
                yield from (f"mlcourse.{a.name}" for a in node.names if a.name != "__version__")
            elif node.module.startswith("mlcourse."):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("mlcourse."))


def test_every_module_is_in_a_layer_and_imports_only_from_its_own_and_earlier_ones():
    wrong = []
    modules = dict(_modules())
    assert {
        "mlcourse.algorithms.maml",
        "mlcourse.experiments.training",
        "mlcourse.course.cli",
    } <= set(modules)
    for module, path in modules.items():
        for imported in _module_level_imports(path):
            if _layer(imported) > _layer(module):
                wrong.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from mlcourse.course import checks\nfrom mlcourse import maml\n")
    assert list(_module_level_imports(bad)) == ["mlcourse.course", "mlcourse.maml"]
    assert _layer("mlcourse.course") > _layer("mlcourse.algorithms.maml")


@pytest.mark.parametrize("old", sorted(mlcourse.MOVED))
def test_an_old_module_name_imports_the_module_at_its_new_name(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(mlcourse.MOVED[old])
    assert module.__name__ == module.__spec__.name == mlcourse.MOVED[old]  # one name, kept


def test_notebooks_released_before_the_folders_still_run():
    """What the lessons' cells imported then, run in a fresh interpreter: the setup cell, the
    checks, the algorithms, a submodule by its old dotted path, and a check's ``forbid`` guard
    (which must see the learner calling the package by its old name)."""
    code = """
import sys
import torch
import mlcourse
from mlcourse.training import default_device, train
from mlcourse import checks as check, maml
from mlcourse.maml import adapt, params_of
from mlcourse.widgets import interact
import mlcourse.checks.lesson01 as old_lesson01
import mlcourse.course.checks.lesson01 as lesson01
assert old_lesson01 is lesson01 and check is sys.modules["mlcourse.course.checks"]
assert maml.adapt is adapt and callable(default_device) and callable(train)
copies = {id(m) for m in sys.modules.values() if getattr(m, "__file__", 0) == lesson01.__file__}
assert len(copies) == 1
mse = torch.nn.functional.mse_loss
result = check.inner_update(
    lambda model, p, x, y, lr: maml.adapt(model, p, x, y, loss_fn=mse, inner_lr=lr)
)
assert not result.passed and "mlcourse.algorithms.maml.adapt" in result.message, result.message
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent
    )
    assert done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_a_name_that_never_existed_is_still_an_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mlcourse.nonexistent")
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        mlcourse.nonexistent  # noqa: B018
