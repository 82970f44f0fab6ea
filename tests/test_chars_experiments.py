"""The few-shot character experiments end to end: train, resume, evaluate, clear errors."""

import argparse

import pytest
import torch

from mlcourse import experiments
from mlcourse.course.cli import main
from mlcourse.experiments import chars
from mlcourse.experiments.training import load_checkpoint

TINY = {"hidden_channels": 8, "meta_batch_size": 2, "n_way": 5, "k_query": 2, "log_every": 2}
CHARS = sorted(chars.EXPERIMENTS)


def _opts(**kw):
    base = dict(n_way=5, k_shot=1, episodes=6, k_query=2, split="test", seed=1, inner_steps=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("name", CHARS)
def test_every_chars_experiment_trains_and_evaluates(tmp_path, name):
    summary = experiments.run_training(
        name, tmp_path, overrides={**TINY, "steps": 3}, device="cpu", progress=False
    )
    assert summary["step"] == 3
    result = experiments.run_evaluation(name, tmp_path, _opts(), device="cpu")
    assert 0 <= result["accuracy"] <= 100 and result["ci95"] >= 0
    assert result["n_way"] == 5 and result["episodes"] == 6 and result["split"] == "test"


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    kw = dict(device="cpu", progress=False)
    experiments.run_training("maml-chars", straight, overrides={**TINY, "steps": 4}, **kw)
    experiments.run_training("maml-chars", split, overrides={**TINY, "steps": 2}, **kw)
    experiments.run_training("maml-chars", split, overrides={"steps": 4}, resume=True, **kw)
    a = load_checkpoint(straight, "cpu")["learner"]["model"]
    b = load_checkpoint(split, "cpu")["learner"]["model"]
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_evaluation_is_reproducible_and_on_held_out_classes(tmp_path):
    experiments.run_training(
        "protonet-chars", tmp_path, overrides={**TINY, "steps": 2}, device="cpu", progress=False
    )
    learner, _ = experiments.load_learner("protonet-chars", tmp_path, "cpu")
    first = chars.evaluate(learner, n_way=5, k_shot=1, episodes=6, k_query=2)
    again = chars.evaluate(learner, n_way=5, k_shot=1, episodes=6, k_query=2)
    assert first == again
    test_classes = set(learner.data.classes("test").tolist())
    assert not test_classes & set(learner.data.classes("train").tolist())


def test_maml_head_size_must_match_n_way(tmp_path):
    experiments.run_training(
        "maml-chars", tmp_path, overrides={**TINY, "steps": 1}, device="cpu", progress=False
    )
    with pytest.raises(ValueError, match="--n-way 5"):
        experiments.run_evaluation("maml-chars", tmp_path, _opts(n_way=3), device="cpu")


def test_metric_methods_evaluate_at_any_way(tmp_path):
    experiments.run_training(
        "protonet-chars", tmp_path, overrides={**TINY, "steps": 1}, device="cpu", progress=False
    )
    result = experiments.run_evaluation("protonet-chars", tmp_path, _opts(n_way=3), device="cpu")
    assert result["n_way"] == 3


def test_omniglot_needs_a_data_dir(tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        experiments.run_training(
            "protonet-chars", tmp_path, overrides={"dataset": "omniglot"}, progress=False
        )
    with pytest.raises(FileNotFoundError, match="Omniglot is not in"):
        experiments.run_training(
            "protonet-chars",
            tmp_path / "run",
            overrides={"dataset": "omniglot", "data_dir": str(tmp_path / "none")},
            progress=False,
        )


def test_cli_flags_and_json(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "matchingnet-chars", "--out", out, "--steps", "2", "--fce", "--no-progress"]
    argv += ["--hidden-channels", "8", "--n-way", "5", "--k-query", "2", "--json"]
    assert main(argv) == 0
    capsys.readouterr()
    assert load_checkpoint(out, "cpu")["config"]["fce"] is True
    assert main(["eval", "matchingnet-chars", "--checkpoint", out, "--episodes", "4"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_per_task_loop_trains_the_same_model(tmp_path):
    kw = dict(device="cpu", progress=False)
    over = {**TINY, "steps": 2}
    experiments.run_training("maml-chars", tmp_path / "vmap", overrides=over, **kw)
    experiments.run_training(
        "maml-chars", tmp_path / "loop", overrides={**over, "per_task_loop": True}, **kw
    )
    a = load_checkpoint(tmp_path / "vmap", "cpu")["learner"]["model"]
    b = load_checkpoint(tmp_path / "loop", "cpu")["learner"]["model"]
    assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-4
