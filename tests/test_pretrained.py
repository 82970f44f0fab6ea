"""The store of shipped agents: one record type, every agent listed, loadable, evaluable and
trainable from by name, and each still scoring the report figure it is shipped for."""

import dataclasses
import json
import shutil
from importlib.resources import files

import pytest
import torch

from mlcourse import experiments, pretrained
from mlcourse.course.cli import main
from mlcourse.experiments.learner import Learner
from mlcourse.experiments.training import load_checkpoint

NAMES = pretrained.names()


def one_json(text: str) -> dict:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_the_store_lists_every_shipped_file_and_nothing_else():
    folder = files("mlcourse.pretrained")
    shipped = sorted(p.name[:-3] for p in folder.iterdir() if p.name.endswith(".pt"))
    assert NAMES == shipped and len(NAMES) >= 6


@pytest.mark.parametrize("name", NAMES)
def test_each_agent_loads_as_one_record_with_its_figure(name):
    agent = pretrained.load(name)
    spec = experiments.get(agent.experiment)
    assert agent.name == name and isinstance(agent.config, spec.config_cls)
    assert agent.steps > 0 and agent.seconds > 0 and agent.trained
    network = agent.network()
    assert isinstance(network, torch.nn.Module) and not network.training
    figure = agent.figure
    assert figure.command(agent).startswith(f"mlcourse eval {agent.experiment} --checkpoint {name}")
    assert figure.tolerance > 0 and figure.text and figure.section
    learner = agent.learner("cpu")
    assert isinstance(learner, Learner)
    for part, tensors in agent.weights.items():
        own = learner.weights()[part]
        assert all(torch.equal(own[k], v) for k, v in tensors.items()), part


def test_the_report_sections_the_figures_cite_exist():
    report = (files("mlcourse").parent / "docs" / "reproductions.md").read_text()
    headings = {line.lstrip("#").strip() for line in report.splitlines() if line.startswith("#")}
    for name in NAMES:
        assert pretrained.load(name).figure.section in headings, name


def test_the_pretrained_command_lists_every_agent(capsys):
    assert main(["pretrained", "--json"]) == 0
    listed = one_json(capsys.readouterr().out)
    assert sorted(listed) == NAMES
    for name, entry in listed.items():
        agent = pretrained.load(name)
        assert entry["experiment"] == agent.experiment and entry["steps"] == agent.steps
        assert entry["reproduces"]["command"] == agent.figure.command(agent)
        assert entry["config"] == dataclasses.asdict(agent.config)
    assert main(["pretrained"]) == 0
    text = capsys.readouterr().out
    assert all(
        f"mlcourse eval {pretrained.load(n).experiment} --checkpoint {n}" in text for n in NAMES
    )


def test_an_unknown_name_is_refused_with_the_names_shipped():
    with pytest.raises(KeyError, match="rl2-bandit-k5-n10"):
        pretrained.load("rl2-bandit-k9")


@pytest.mark.parametrize("name", NAMES)
def test_each_agent_starts_a_run_by_name(tmp_path, name):
    """``mlcourse train EXPERIMENT --init-from NAME`` works for every shipped agent: the run's
    first checkpoint holds the shipped weights."""
    agent = pretrained.load(name)
    options = {**dataclasses.asdict(agent.config), "steps": 1}
    for big, small in (("trials_per_step", 4), ("buffer_size", 1000), ("meta_batch_size", 2)):
        if big in options:
            options[big] = small
    out = tmp_path / "run"
    experiments.run_training(
        agent.experiment, out, overrides=options, progress=False, init_from=name, max_seconds=0
    )
    state = load_checkpoint(out, "cpu")
    for part, tensors in agent.weights.items():
        assert all(torch.equal(state["learner"][part][k], v) for k, v in tensors.items()), part
    assert json.loads((out / "config.json").read_text())["init_from"] == {
        "shipped": name,
        "step": agent.steps,
    }


def test_eval_refuses_an_agent_of_another_experiment(capsys):
    assert main(["eval", "maml-rl-nav", "--checkpoint", "fomaml-rl-nav"]) == 1
    err = capsys.readouterr().err
    assert "shipped 'fomaml-rl-nav' agent" in err and "'maml-rl-nav' can only use" in err


def _close(measured, expected, tolerance: float) -> bool:
    if isinstance(expected, tuple):
        return len(measured) == len(expected) and all(
            abs(m - e) <= tolerance for m, e in zip(measured, expected, strict=True)
        )
    return abs(measured - expected) <= tolerance


# MetaGenRL's figures train fresh agents for minutes (4 and 8 min on a 2-core CPU): make test-full
FULL = {"metagenrl-nav-mc", "metagenrl-pen-mc"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.full) if n in FULL else n for n in NAMES]
)
def test_each_shipped_agent_scores_its_report_figure(name, capsys):
    """``mlcourse eval EXPERIMENT --checkpoint NAME`` with the figure's options measures the
    figure the reproduction report states for that agent."""
    agent = pretrained.load(name)
    figure = agent.figure
    argv = ["eval", agent.experiment, "--checkpoint", name, *figure.eval_args, "--json"]
    assert main([*argv, "--device", "cpu"]) == 0
    result = one_json(capsys.readouterr().out)
    measured = figure.measured(result)
    assert _close(measured, figure.value, figure.tolerance), (measured, figure.value)


def test_export_counts_every_stage_of_a_run_trained_in_stages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --init-from records the paths as given
    small = {"meta_batch_size": 2, "hidden": "8,8", "log_every": 1}
    experiments.run_training("maml-sine", "a", overrides={**small, "steps": 2}, progress=False)
    for out, before, steps in (("b", "a", 3), ("c", "b", 1)):
        experiments.run_training(
            "maml-sine", out, overrides={**small, "steps": steps}, init_from=before,
            progress=False,
        )  # fmt: skip
    runs = [load_checkpoint(run, "cpu") for run in "abc"]
    info = pretrained.export("c", "agent.pt", note="three stages")
    assert info["steps"] == 6 == torch.load("agent.pt", weights_only=True)["steps"]
    assert info["seconds"] == round(sum(r["seconds"] for r in runs), 1)
    shutil.rmtree("a")
    with pytest.raises(FileNotFoundError, match="the run this one continued, a, is not there"):
        pretrained.export("c", "agent.pt", note="three stages")


def test_export_adds_the_shipped_agent_a_run_started_from(tmp_path):
    shipped = pretrained.load("fomaml-rl-nav")
    experiments.run_training(
        "fomaml-rl-nav", tmp_path / "ft", init_from="fomaml-rl-nav", max_seconds=0,
        progress=False,
    )  # fmt: skip
    info = pretrained.export(tmp_path / "ft", tmp_path / "agent.pt", note="test")
    assert info["steps"] == shipped.steps
