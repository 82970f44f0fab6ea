"""The ``mlcourse`` command line: train, eval, pretrained, bench, baselines, doctor, release,
grade. Each subcommand is a function registered with :func:`command`, which gives it its line
in ``mlcourse --help``.

Every command that reports numbers takes ``--json`` and then prints exactly one JSON object on
standard output (progress bars and messages go to standard error).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

from mlcourse.options import nonnegative_float, positive_float, positive_int


@dataclass(frozen=True)
class Command:
    """A subcommand: its line in ``mlcourse --help`` and the function that runs it."""

    text: str
    run: Callable[[list[str]], int]


COMMANDS: dict[str, Command] = {}  # filled by @command, in the order of `mlcourse --help`


def command(name: str, text: str) -> Callable:
    """Registers ``run(rest) -> exit code`` as ``mlcourse NAME``."""

    def register(run: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        if name in COMMANDS:
            raise ValueError(f"two commands are named {name!r}")
        COMMANDS[name] = Command(text, run)
        return run

    return register


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and a pointer to ``--help``, not the whole
    usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists the options)\n")


def _emit(result: dict, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print(text if text is not None else json.dumps(result, indent=2))


def _experiment_name(rest: list[str]) -> str | None:
    """The experiment named on the command line, wherever it stands among the options."""
    from mlcourse import experiments

    for i, arg in enumerate(rest):
        folder = i > 0 and rest[i - 1] in ("--out", "--checkpoint")
        if arg in experiments.EXPERIMENTS and not folder:
            return arg
    return rest[0] if rest and not rest[0].startswith("-") else None


def _experiment_parser(command: str, rest: list[str]):
    from mlcourse import experiments

    parser = _Parser(prog=f"mlcourse {command}", description=COMMANDS[command].text)
    lines = [f"  {n:<19}{e.description}" for n, e in experiments.EXPERIMENTS.items()]
    parser.epilog = "experiments:\n" + "\n".join(lines)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("experiment", choices=sorted(experiments.EXPERIMENTS), metavar="EXPERIMENT")
    name = _experiment_name(rest)
    exp = experiments.EXPERIMENTS.get(name) if name else None
    return parser, exp


@command("train", "train an experiment, with checkpoints and --resume")
def cmd_train(rest: list[str]) -> int:
    from mlcourse import experiments

    parser, exp = _experiment_parser("train", rest)
    parser.add_argument("--out", required=True, help="run folder (checkpoint, config, log)")
    parser.add_argument(
        "--max-seconds",
        type=nonnegative_float,
        default=None,
        help="stop after this many seconds of training (a checkpoint is saved; 0 saves the "
        "starting point without training)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="start from the weights of another run of this experiment, or of an agent the "
        "course ships (`mlcourse pretrained`; e.g. --init-from rl2-mdp-n10 fine-tunes the "
        "n = 10 agent on n = 25); optimizer and schedule start afresh",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--json", action="store_true", help="print one JSON summary")
    if exp is not None:
        group = parser.add_argument_group(f"{exp.name} options")
        for f in dataclasses.fields(exp.config_cls):
            default = exp.defaults.get(f.name, f.default)
            kind = (
                {"action": argparse.BooleanOptionalAction}
                if isinstance(f.default, bool)
                else {"type": type(f.default)}
            )
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                **kind,
                default=None,
                help=f"{f.metadata.get('help', '')} (default: {default})",
            )
    args = parser.parse_args(rest)
    fields = [f.name for f in dataclasses.fields(exp.config_cls)]
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    summary = experiments.run_training(
        args.experiment,
        args.out,
        overrides=overrides,
        device=args.device,
        max_seconds=args.max_seconds,
        resume=args.resume,
        progress=not args.no_progress,
        init_from=args.init_from,
    )
    _emit(summary, args.json, _train_text(summary))
    return 0


def _train_text(summary: dict) -> str:
    """One line for a finished ``train`` call."""
    done = f"{summary['experiment']}: step {summary['step']}/{summary['steps']}"
    if summary.get("already_finished"):
        return (
            f"{done}: the run in {summary['out']} had already finished; nothing to do "
            "(give a larger --steps to train it further)"
        )
    loss = "no step taken" if summary["loss"] is None else f"loss {summary['loss']:.4g}"
    return f"{done} in {summary['seconds']:.0f} s, {loss}; checkpoint in {summary['out']}"


@command("eval", "evaluate a trained checkpoint, or an agent the course ships")
def cmd_eval(rest: list[str]) -> int:
    from mlcourse import experiments

    parser, exp = _experiment_parser("eval", rest)
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run folder written by `mlcourse train`, or the name of an agent the course ships "
        "(`mlcourse pretrained` lists them, e.g. --checkpoint rl2-bandit-k5-n10)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    if exp is not None:
        exp.add_eval_args(parser.add_argument_group(f"{exp.name} options"))
    args = parser.parse_args(rest)
    result = experiments.run_evaluation(args.experiment, args.checkpoint, args, device=args.device)
    text = "\n".join(f"{k:<16}{v}" for k, v in result.items())
    _emit(result, args.json, text)
    return 0


@command("pretrained", "the agents the course ships, and the report figure each reproduces")
def cmd_pretrained(rest: list[str]) -> int:
    from mlcourse import pretrained

    parser = _Parser(prog="mlcourse pretrained", description=COMMANDS["pretrained"].text)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(rest)
    agents = [pretrained.load(name) for name in pretrained.names()]
    result = {agent.name: agent.describe() for agent in agents}
    lines = []
    for agent in agents:
        figure = agent.figure
        value = figure.value if isinstance(figure.value, float) else list(figure.value)
        lines += [
            f"{agent.name}  ({agent.experiment}, {agent.steps} iterations)",
            f"  reproduces  {figure.text}: {value}",
            f"  measure it  {figure.command(agent)}",
            f"  trained     {agent.trained}",
        ]
    _emit(result, args.json, "\n".join(lines))
    return 0


@command("bench", "side-by-side speed ratios measured in one run")
def cmd_bench(rest: list[str]) -> int:
    from mlcourse.course import bench

    parser = _Parser(prog="mlcourse bench", description=COMMANDS["bench"].text)
    parser.add_argument(
        "name",
        choices=sorted(bench.BENCHMARKS),
        metavar="NAME",
        help=f"one of {', '.join(sorted(bench.BENCHMARKS))}",
    )
    parser.add_argument(
        "--iters",
        type=positive_int,
        default=None,
        help="iterations per round and variant (default: per benchmark)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=None,
        help="alternating rounds (default: per benchmark)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile (compiles first: about a minute on a CPU)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(rest)
    sizes = {k: v for k in ("iters", "rounds") if (v := getattr(args, k)) is not None}
    result = bench.BENCHMARKS[args.name](device=args.device, compile=args.compile, **sizes)
    _emit(result, args.json, "\n".join(f"{k:<22}{v}" for k, v in result.items()))
    return 0


@command("baselines", "the classic bandit and MDP strategies (RL² Tables 1 and 2)")
def cmd_baselines(rest: list[str]) -> int:
    parser = _Parser(prog="mlcourse baselines", description=COMMANDS["baselines"].text)
    sub = parser.add_subparsers(dest="family", required=True, metavar="bandit|mdp")
    bandit = sub.add_parser("bandit", help="Bernoulli bandits with arms U[0, 1]")
    bandit.add_argument("--arms", type=positive_int, default=5, help="k (default: 5)")
    bandit.add_argument(
        "--pulls", type=positive_int, default=10, help="n, pulls per trial (default: 10)"
    )
    bandit.add_argument(
        "--episodes", type=positive_int, default=10_000, help="bandits (trials) to average over"
    )
    bandit.add_argument(
        "--epsilon", type=nonnegative_float, default=0.1, help="ε of ε-greedy (default 0.1)"
    )
    bandit.add_argument(
        "--ucb-c", type=nonnegative_float, default=1.0, help="UCB1's bonus scale (default 1)"
    )
    mdp = sub.add_parser("mdp", help="random tabular MDPs (10 states, 5 actions, 10 steps)")
    mdp.add_argument(
        "--episodes-per-trial",
        type=positive_int,
        default=10,
        help="n, episodes per trial (default: 10)",
    )
    mdp.add_argument(
        "--trials", type=positive_int, default=1000, help="MDPs (trials) to average over"
    )
    mdp.add_argument(
        "--epsilon", type=nonnegative_float, default=0.1, help="ε of ε-greedy (default 0.1)"
    )
    mdp.add_argument(
        "--beb-beta", type=nonnegative_float, default=1.0, help="BEB's bonus scale (default 1)"
    )
    for p in (bandit, mdp):
        p.add_argument("--seed", type=int, default=0, help="seed of the tasks and the strategies")
        p.add_argument("--device", default="cpu", help="where the environments run (cpu)")
        p.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(rest)
    if args.family == "bandit":
        from mlcourse.rl.bandits import bandit_baselines

        result = bandit_baselines(
            args.arms,
            args.pulls,
            args.episodes,
            seed=args.seed,
            epsilon=args.epsilon,
            ucb_c=args.ucb_c,
            device=args.device,
        )
    else:
        from mlcourse.rl.mdps import mdp_baselines

        result = mdp_baselines(
            args.episodes_per_trial,
            args.trials,
            seed=args.seed,
            epsilon=args.epsilon,
            beb_beta=args.beb_beta,
            device=args.device,
        )
    text = "\n".join(
        f"{name:<20}{r['mean']:9.2f} ± {r['stderr']:.2f}" for name, r in result.items()
    )
    _emit(result, args.json, text)
    return 0


@command("doctor", "versions, device, widgets, and what will be slow")
def cmd_doctor(rest: list[str]) -> int:
    from mlcourse.course import doctor

    parser = _Parser(prog="mlcourse doctor", description=COMMANDS["doctor"].text)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(rest)
    rep = doctor.report()
    _emit(rep, args.json, doctor.format_report(rep))
    return 0


@command("release", "write exercises/ from solutions/ and stamp every notebook's setup cells")
def cmd_release(rest: list[str]) -> int:
    from mlcourse.course import release

    parser = _Parser(prog="mlcourse release", description=COMMANDS["release"].text)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; fail when a file is out of date"
    )
    parser.add_argument("--root", default=".", help="the course repository (default: .)")
    parser.add_argument(
        "--repo",
        default=None,
        metavar="OWNER/NAME",
        help="move the course to this GitHub repository (a fork): every badge, setup cell and "
        "README link, and mlcourse/course/__init__.py, name it from then on",
    )
    args = parser.parse_args(rest)
    if args.repo is not None:
        from mlcourse import course

        try:
            args.repo = course.check_repo(args.repo)
        except ValueError as err:
            parser.error(str(err))
    changed, orphans = release.release(args.root, check=args.check, repo=args.repo)
    for path in orphans:
        print(f"{path}: no solutions/{path.name} behind it; delete it", file=sys.stderr)
    if args.check:
        for path in changed:
            print(f"{path} is out of date", file=sys.stderr)
        if changed:
            print("run `mlcourse release` and commit the result", file=sys.stderr)
        return 1 if changed or orphans else 0
    for path in changed:
        print(f"wrote {path}")
    print(f"release: {len(changed)} file(s) written" if changed else "release: up to date")
    if args.repo is not None and changed:
        print(f"release: the course now installs from and opens in {args.repo}; commit and push")
    return 1 if orphans else 0


@command("grade", "execute submitted notebooks and write a gradebook")
def cmd_grade(rest: list[str]) -> int:
    from mlcourse.course import grading, sandbox

    parser = _Parser(prog="mlcourse grade", description=COMMANDS["grade"].text)
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="submitted notebooks, or folders of them"
    )
    parser.add_argument("--csv", default=None, help="write the gradebook to this CSV file")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=grading.DEFAULT_TIMEOUT,
        help=f"seconds per notebook (default: {grading.DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--jobs", type=positive_int, default=1, help="submissions graded at once (default: 1)"
    )
    parser.add_argument(
        "--memory",
        default=sandbox.DEFAULT_MEMORY,
        help=f"memory each submission's kernel may use (default: {sandbox.DEFAULT_MEMORY})",
    )
    parser.add_argument(
        "--max-output",
        type=positive_int,
        default=grading.DEFAULT_MAX_OUTPUT,
        help="bytes of output kept per submission; check results are always kept "
        f"(default: {grading.DEFAULT_MAX_OUTPUT:,})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(rest)
    try:
        memory = sandbox.parse_memory(args.memory)
    except ValueError as err:
        parser.error(f"argument --memory: {err}")
    paths = grading.find_notebooks(args.paths)
    rows = grading.grade_all(
        paths,
        timeout=args.timeout,
        jobs=args.jobs,
        memory=memory,
        max_output=args.max_output,
        log=sys.stderr,
    )
    if args.csv:
        grading.write_csv(rows, args.csv)
    result = {"csv": args.csv, "sandbox": grading.sandbox_notice(), "submissions": rows}
    _emit(result, args.json, grading.format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: mlcourse {"
        + ",".join(COMMANDS)
        + "} ...\n\n"
        + "\n".join(f"  {name:<11}{c.text}" for name, c in COMMANDS.items())
        + "\n\n`mlcourse COMMAND --help` for a command's options."
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    if argv[0] == "--version":
        from mlcourse import __version__

        print(f"mlcourse {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"mlcourse: unknown command {argv[0]!r}\n\n{usage}", file=sys.stderr)
        return 2
    from mlcourse.options import OptionError

    try:
        return COMMANDS[argv[0]].run(argv[1:])
    except KeyboardInterrupt as err:
        if getattr(err, "signum", None):  # training.Interrupted: stopped at a signal, saved
            print(f"mlcourse {argv[0]}: {err}", file=sys.stderr)
            return 128 + err.signum
        print("mlcourse: interrupted (the last checkpoint is kept; use --resume)", file=sys.stderr)
        return 130
    except OptionError as err:
        print(f"mlcourse {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, FloatingPointError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mlcourse {argv[0]}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
