"""The learner type and the experiment registry: every experiment is a Learner subclass that
trains, logs, evaluates and starts from another run's weights the same way."""

import argparse
import json

import pytest
import torch

from mlcourse import experiments
from mlcourse.experiments.learner import Experiment, Learner
from mlcourse.experiments.training import load_checkpoint

SMALL_SINE = {"steps": 2, "meta_batch_size": 2, "hidden": "8,8", "log_every": 1}


def test_every_experiment_is_a_learner_with_its_config_description_and_eval_options():
    assert len(experiments.EXPERIMENTS) == 23
    for name, exp in experiments.EXPERIMENTS.items():
        assert isinstance(exp, Experiment) and exp.name == name
        assert issubclass(exp.learner, Learner) and exp.config_cls is exp.learner.CONFIG
        assert exp.description and not exp.description.endswith(".")
        fields = {f for f in exp.config_cls.__dataclass_fields__}
        assert set(exp.defaults) <= fields, name
        parser = argparse.ArgumentParser()
        exp.add_eval_args(parser)
        assert parser.parse_args([]) is not None  # every eval option has a default


def test_a_learner_that_leaves_out_part_of_the_type_cannot_be_made():
    class Partial(Learner):
        CONFIG = dict

        def step(self, step):
            return torch.zeros(())

    with pytest.raises(TypeError, match="abstract"):
        Partial()


def _run(tmp_path, name="maml-sine", **overrides):
    out = tmp_path / name
    experiments.run_training(name, out, overrides={**SMALL_SINE, **overrides}, progress=False)
    return out


def test_load_weights_copies_every_component_and_nothing_else(tmp_path):
    src = _run(tmp_path, "metasgd-sine")
    state = load_checkpoint(src, "cpu")
    config = experiments.make_config(experiments.get("metasgd-sine").config_cls, state["config"])
    learner = experiments.get("metasgd-sine").learner(config, torch.device("cpu"))
    before = learner.optimizer.state_dict()
    learner.load_weights(state["learner"], source="the run")
    for name, tensor in learner.model.state_dict().items():
        assert torch.equal(tensor, state["learner"]["model"][name]), name
    for name, lr in learner.inner_lrs.items():  # Meta-SGD's learned step sizes come along
        assert torch.equal(lr.detach(), state["learner"]["inner_lrs"][name]), name
    assert learner.optimizer.state_dict() == before  # the optimizer starts afresh
    # The learner holds copies: changing the source afterwards changes nothing.
    state["learner"]["model"]["0.weight"].add_(1.0)
    assert not torch.equal(
        learner.model.state_dict()["0.weight"], state["learner"]["model"]["0.weight"]
    )


def test_load_weights_names_what_does_not_fit(tmp_path):
    src = _run(tmp_path)
    weights = load_checkpoint(src, "cpu")["learner"]
    wider = experiments.make_config(
        experiments.get("maml-sine").config_cls, {**SMALL_SINE, "hidden": "16,8"}
    )
    learner = experiments.get("maml-sine").learner(wider, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"0\.weight, 0\.bias, 2\.weight differ.*hidden widths"):
        learner.load_weights(weights, source="the small run")
    deeper = experiments.make_config(
        experiments.get("maml-sine").config_cls, {**SMALL_SINE, "hidden": "8"}
    )
    learner = experiments.get("maml-sine").learner(deeper, torch.device("cpu"))
    with pytest.raises(ValueError, match="4.weight, 4.bias differ"):  # theirs has a layer more
        learner.load_weights(weights, source="the small run")


def test_init_from_works_for_a_supervised_experiment(tmp_path):
    src = _run(tmp_path)
    out = tmp_path / "ft"
    experiments.run_training(
        "maml-sine", out, overrides=SMALL_SINE, progress=False, init_from=src, max_seconds=0
    )
    start = load_checkpoint(out, "cpu")["learner"]["model"]
    source = load_checkpoint(src, "cpu")["learner"]["model"]
    assert all(torch.equal(start[n], source[n]) for n in source)
    assert json.loads((out / "config.json").read_text())["init_from"] == {
        "run": str(src),
        "step": 2,
    }


def test_character_runs_log_their_training_accuracy(tmp_path):
    tiny = {"hidden_channels": 8, "meta_batch_size": 2, "n_way": 5, "k_query": 2}
    experiments.run_training(
        "protonet-chars",
        tmp_path,
        overrides={**tiny, "steps": 4, "log_every": 2},
        device="cpu",
        progress=False,
    )
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert all(0 <= line["accuracy"] <= 100 for line in lines)
    learner, _ = experiments.load_learner("protonet-chars", tmp_path, "cpu")
    assert learner.metrics() == {}  # nothing since the last call: no figure, never a nan
