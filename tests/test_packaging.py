"""The install story: loose torch for Colab, pins for CI, conda and pip naming the same things."""

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch", "jupyter_client": "jupyter-client"}
NOT_PACKAGES = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_conda_environment_names_the_same_packages_as_pip():
    project = pyproject()["project"]
    pip_names = {
        _name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    }
    conda, section = [], None
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"^\w", line):
            section = line.split(":")[0]
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+[^:]*)$", line)
        if section == "dependencies" and m:
            conda.append(m.group(1))
    conda_names = {CONDA_NAMES.get(_name(r), _name(r)) for r in conda} - NOT_PACKAGES
    assert conda_names == pip_names


def test_versions_agree_between_conda_and_pip():
    project = pyproject()["project"]
    pip_reqs = {_name(r): r.replace(" ", "") for r in project["dependencies"]}
    text = (ROOT / "environment.yml").read_text()
    for name, req in pip_reqs.items():
        spec = req[len(name) :]
        conda_name = {v: k for k, v in CONDA_NAMES.items()}.get(name, name)
        assert f"{conda_name}{spec}" in text, (name, spec)


def test_torch_is_loose_for_colab_and_pinned_for_ci():
    deps = pyproject()["project"]["dependencies"]
    torch_req = next(r for r in deps if _name(r) == "torch")
    assert torch_req.replace(" ", "") == "torch>=2.5"
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==\d+\.\d+\.\d+$", pins, re.M)
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_no_legacy_or_compiled_dependencies():
    project = pyproject()["project"]
    names = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    assert not names & {"torchvision", "gym", "cython", "learn2learn", "torchmeta", "higher"}
    assert project["requires-python"] == ">=3.10"
    assert "ext-modules" not in str(pyproject().get("tool", {}).get("setuptools", {}))


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make lab" in first_block and "make test" in first_block


def _imported_distributions() -> dict[str, set[str]]:
    """Third-party distributions the package imports (anywhere, lazily or not) -> files."""
    import ast
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (ROOT / "mlcourse").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names):
                for dist in owners.get(top, []) if top != "mlcourse" else []:
                    found.setdefault(_name(dist), set()).add(path.name)
    return found


def _requirements_of(names: set[str]) -> set[str]:
    """``names`` and everything they require, transitively (extras left out)."""
    from importlib.metadata import PackageNotFoundError, requires

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [_name(r) for r in reqs if "extra ==" not in r]
    return seen


def test_everything_the_package_imports_comes_without_dev_extras():
    """`pip install mlcourse` alone runs every command, `mlcourse grade` and `release`
    included: what the package imports is a core dependency or installed by one, and the
    notebook machinery it drives (nbformat, nbclient, jupyter_client, ipykernel) is declared."""
    core = {_name(r) for r in pyproject()["project"]["dependencies"]}
    imported = _imported_distributions()
    missing = {d: f for d, f in imported.items() if d not in _requirements_of(core)}
    assert not missing, f"imported but not installed by the core dependencies: {missing}"
    for name in ("nbformat", "nbclient", "jupyter-client", "ipykernel"):
        assert name in core and name in imported, name


def test_licences_a_reuser_can_rely_on():
    """MIT for the code (an SPDX expression, as setuptools >= 77 reads it, with its file),
    CC BY 4.0 for the lessons' prose and figures, both stated in the README."""
    project = pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) ")
    content = " ".join((ROOT / "LICENSE-CONTENT").read_text().split())
    assert "Creative Commons Attribution 4.0 International" in content
    assert "Section 1 – Definitions." in content and "MIT License in LICENSE" in content
    build = pyproject()["build-system"]["requires"]
    assert build == ["setuptools>=77"], "SPDX license expressions need setuptools 77"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "under the MIT License, in `LICENSE`" in readme
    cc_by = "[CC BY 4.0](https://creativecommons.org/licenses/by/4.0/), in `LICENSE-CONTENT`"
    assert cc_by in readme


def test_the_package_metadata_builds_without_deprecation_warnings(tmp_path):
    """What `make lab` and `make test` build (`pip install -e .`): the metadata carries the
    licence as an SPDX expression, and setuptools has nothing to warn about."""
    import shutil
    import subprocess

    setuptools = pytest.importorskip("setuptools")
    if tuple(int(p) for p in setuptools.__version__.split(".")[:1]) < (77,):
        pytest.skip(f"setuptools {setuptools.__version__} here; the build uses setuptools>=77")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "mlcourse", tmp_path / "mlcourse", ignore=shutil.ignore_patterns("__pycache__")
    )
    code = (
        "import sys\nfrom setuptools import build_meta\n"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", code, str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Deprecat" not in result.stderr + result.stdout, result.stderr
    metadata = (out / result.stdout.split()[-1] / "METADATA").read_text()
    assert "\nLicense-Expression: MIT\n" in metadata and "\nLicense-File: LICENSE\n" in metadata


def test_citation_names_this_version_licences_and_a_repository():
    yaml = pytest.importorskip("yaml")
    from mlcourse import __version__, course

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["version"] == __version__ and citation["title"] and citation["authors"]
    assert citation["license"] == ["MIT", "CC-BY-4.0"]
    prefix = "https://github.com/"
    assert citation["repository-code"].startswith(prefix)
    course.check_repo(citation["repository-code"][len(prefix) :])
