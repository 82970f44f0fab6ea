"""The install story: loose torch for Colab, pins for CI, conda and pip naming the same things."""

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}
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
    assert torch_req.replace(" ", "") == "torch>=2.4"
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
