"""Mutation testing of the numerical core (``make mutate``; not part of ``make test``).

mutmut 3 (settings under ``[tool.mutmut]`` in ``pyproject.toml``) mutates one module at a time
and runs that module's own tests and doctests against every mutant: a mutant that no test
fails on (a *survivor*) is a change of the code that the tests would not notice. mutmut reads
one test selection per configuration, so this script runs it once per module, each in its own
folder ``mutants/<name>/`` (git-ignored; ``cd`` there and ``mutmut show <mutant>`` shows a
diff), and prints ``module | killed | tried | score``: a mutant that makes the tests fail, time
out or crash is killed; one that no test reaches counts as tried and not killed. The survivors
that remain are listed, each with why it changes no behaviour, in ``tests/mutation_survivors.md``.

Usage::

    python tools/mutate.py                    # every module below
    python tools/mutate.py rl/returns rl/ppo  # some of them
    python tools/mutate.py --jobs 1 reptile   # one test process at a time
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "mutants"
# What each mutant's test run sees: the package, the tests and the pytest configuration.
LINKED = ("mlcourse", "tests", "conftest.py", "pyproject.toml")


@dataclasses.dataclass(frozen=True)
class Target:
    """One module under mutation.

    Attributes:
        path: the file mutmut mutates.
        tests: pytest arguments selecting its own tests (its doctests come with its path).
        functions: mutant-name patterns when only part of the file is numerical core
            (``()``: the whole file).
    """

    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()


def _fns(module: str, *names: str) -> tuple[str, ...]:
    """mutmut's mutant-name patterns for functions (``f``) and methods (``Class.f``)."""
    patterns = []
    for name in names:
        owner, _, function = name.rpartition(".")
        mangled = f"xǁ{owner}ǁ{function}" if owner else f"x_{function}"
        patterns.append(f"{module}.{mangled}__mutmut_*")
    return tuple(patterns)


TARGETS = {
    "rl/returns": Target(
        "mlcourse/rl/returns.py",
        ("tests/test_rl2.py", "-k", "gae or returns", "mlcourse/rl/returns.py"),
    ),
    "rl/ppo": Target(
        "mlcourse/rl/ppo.py", ("tests/test_rl2.py", "-k", "ppo_clip", "mlcourse/rl/ppo.py")
    ),
    "rl/dice": Target("mlcourse/rl/dice.py", ("tests/test_dice.py", "mlcourse/rl/dice.py")),
    "reptile": Target(
        "mlcourse/algorithms/reptile.py",
        ("tests/test_metasgd_reptile.py", "mlcourse/algorithms/reptile.py"),
    ),
    "cavia": Target(
        "mlcourse/algorithms/cavia.py",
        ("tests/test_cavia.py", "-m", "not slow", "mlcourse/algorithms/cavia.py"),
    ),
    "metasgd": Target(
        "mlcourse/algorithms/metasgd.py",
        ("tests/test_metasgd_reptile.py", "mlcourse/algorithms/metasgd.py"),
    ),
    "maml": Target(
        "mlcourse/algorithms/maml.py",
        ("tests/test_maml.py", "tests/test_validation.py", "mlcourse/algorithms/maml.py"),
    ),
    "fewshot": Target(
        "mlcourse/algorithms/fewshot.py",
        ("tests/test_fewshot.py", "mlcourse/algorithms/fewshot.py"),
    ),
    "rl2": Target(
        "mlcourse/algorithms/rl2.py",
        ("tests/test_rl2.py", "mlcourse/algorithms/rl2.py"),
        _fns("mlcourse.algorithms.rl2", "Trials.returns", "expected_reward", "ppo_update"),
    ),
    "rl/policies": Target(
        "mlcourse/rl/policies.py",
        ("tests/test_maml_rl.py", "-k", "gaussian or policy", "mlcourse/rl/policies.py"),
        _fns("mlcourse.rl.policies", "gaussian_log_prob", "GaussianMLPPolicy.log_prob"),
    ),
    "maml_rl": Target(
        "mlcourse/algorithms/maml_rl.py",
        ("tests/test_maml_rl.py", "mlcourse/algorithms/maml_rl.py"),
        _fns(
            "mlcourse.algorithms.maml_rl",
            "gaussian_kl",
            "pre_update_kl",
            "log_prob",
            "log_prob_per_goal",
            "Trajectories.returns",
            "Trajectories.returns_to_go",
            "Trajectories.baseline",
            "inner_objective",
            "adapt",
            "step_sizes",
            "normalized_advantages",
            "outer_loss",
            "clipped_loss",
        ),
    ),
}

KILLED = {"killed", "timeout", "segfault", "caught by type check"}
NOT_TRIED = {"skipped", "not checked"}


def work_dir(name: str) -> Path:
    return OUT / name.replace("/", "_")


def run_mutmut(name: str, jobs: int | None) -> None:
    """In ``work_dir(name)``: mutmut with this target's file and tests, then its verdicts."""
    import mutmut.configuration
    from mutmut.__main__ import cli, get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    target = TARGETS[name]
    config = mutmut.configuration.config()
    mutmut.configuration._config = dataclasses.replace(
        config,
        only_mutate=[target.path],
        pytest_add_cli_args_test_selection=list(target.tests),
    )
    args = ["run", *(["--max-children", str(jobs)] if jobs else []), *target.functions]
    try:
        cli(args, standalone_mode=False)
    except SystemExit as exit_:
        if exit_.code:
            raise
    meta = json.loads((Path("mutants") / f"{target.path}.meta").read_text())
    verdicts = {
        mutant: status_by_exit_code[code]
        for mutant, code in meta["exit_code_by_key"].items()
        if not target.functions or any(fnmatch.fnmatch(mutant, p) for p in target.functions)
    }
    survivors = {
        m: get_diff_for_mutant(m, path=target.path)
        for m, v in verdicts.items()
        if v not in KILLED | NOT_TRIED
    }
    Path("verdicts.json").write_text(json.dumps({"verdicts": verdicts, "survivors": survivors}))


def mutate(name: str, jobs: int | None) -> dict:
    """A fresh mutmut run over one target; returns its verdicts, survivors and wall time."""
    here = work_dir(name)
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    for entry in LINKED:
        (here / entry).symlink_to(ROOT / entry)
    command = [sys.executable, str(Path(__file__).resolve()), "--inside", name]
    if jobs:
        command += ["--jobs", str(jobs)]
    start = time.perf_counter()
    subprocess.run(command, cwd=here, check=True)
    result = json.loads((here / "verdicts.json").read_text())
    result["seconds"] = time.perf_counter() - start
    return result


def table(results: dict[str, dict]) -> str:
    lines = ["module | killed | tried | score | wall time", "--- | --- | --- | --- | ---"]
    for name, result in results.items():
        verdicts = result["verdicts"].values()
        tried = sum(v not in NOT_TRIED for v in verdicts)
        killed = sum(v in KILLED for v in verdicts)
        score = f"{100 * killed / tried:.1f} %" if tried else "-"
        lines.append(f"{name} | {killed} | {tried} | {score} | {result['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(TARGETS))
    parser.add_argument("--jobs", type=int, help="test processes at once (default: all CPUs)")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        run_mutmut(args.inside, args.jobs)
        return
    unknown = sorted(set(args.modules) - set(TARGETS))
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
    results = {}
    for name in args.modules or list(TARGETS):
        results[name] = mutate(name, args.jobs)
    for name, result in results.items():
        for mutant, diff in result["survivors"].items():
            print(f"\n# {name}: {mutant} survived\n{diff}")
    print()
    print(table(results))
    (OUT / "scores.md").write_text(table(results) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
