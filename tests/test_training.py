"""Training: checkpoints, exact resume, NaN guard, every experiment end to end."""

import json

import pytest
import torch

from mlcourse import experiments
from mlcourse.experiments.sine import SineLearner
from mlcourse.experiments.training import TrainingDiverged, load_checkpoint

SMALL = {"meta_batch_size": 4, "k_support": 5, "k_query": 5, "hidden": "8,8", "log_every": 5}


def _state(out):
    return load_checkpoint(out, "cpu")


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    experiments.run_training(
        "maml-sine", straight, overrides={**SMALL, "steps": 30}, device="cpu", progress=False
    )
    experiments.run_training(
        "maml-sine", split, overrides={**SMALL, "steps": 12}, device="cpu", progress=False
    )
    summary = experiments.run_training(
        "maml-sine", split, overrides={"steps": 30}, device="cpu", resume=True, progress=False
    )
    assert summary["step"] == 30
    a, b = _state(straight), _state(split)
    for name, tensor in a["learner"]["model"].items():
        assert torch.equal(tensor, b["learner"]["model"][name]), name
    log = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [5, 10, 12, 15, 20, 25, 30]


def test_time_budget_stops_with_a_checkpoint(tmp_path):
    summary = experiments.run_training(
        "fomaml-sine", tmp_path, overrides={**SMALL}, device="cpu", max_seconds=1.0, progress=False
    )
    assert 0 < summary["step"] < summary["steps"]
    assert _state(tmp_path)["step"] == summary["step"]


def test_summary_loss_covers_steps_after_the_last_log_line(tmp_path):
    """A run shorter than --log-every still reports its loss, as valid JSON (no NaN)."""
    summary = experiments.run_training(
        "maml-sine", tmp_path, overrides={**SMALL, "steps": 3}, device="cpu", progress=False
    )
    assert summary["step"] == 3 and summary["loss"] > 0
    json.dumps(summary, allow_nan=False)


def test_periodic_checkpoints(tmp_path, monkeypatch):
    saved = []
    import mlcourse.experiments.training as training

    real = training.save_checkpoint
    monkeypatch.setattr(
        training,
        "save_checkpoint",
        lambda path, payload: (saved.append(payload["step"]), real(path, payload)),
    )
    experiments.run_training(
        "maml-sine",
        tmp_path,
        overrides={**SMALL, "steps": 20, "checkpoint_every": 0.0},
        device="cpu",
        progress=False,
    )
    assert saved[:3] == [1, 2, 3] and saved[-1] == 20


def test_nan_is_caught_and_the_good_checkpoint_kept(tmp_path):
    # a huge meta step size sends the weights to 1e30, then the loss overflows to inf/NaN
    overrides = {**SMALL, "steps": 50, "meta_lr": 1e30, "checkpoint_every": 0.0}
    with pytest.raises(
        TrainingDiverged, match=r"diverged at step \d+.*last good checkpoint.*--meta-lr"
    ):
        experiments.run_training(
            "maml-sine", tmp_path, overrides=overrides, device="cpu", progress=False
        )
    state = _state(tmp_path)
    assert state["step"] >= 1
    assert all(torch.isfinite(t).all() for t in state["learner"]["model"].values())


def test_nan_after_the_first_checkpoint_keeps_it(tmp_path):
    """The first step is saved at once: a divergence a few steps in keeps it."""
    with pytest.raises(TrainingDiverged, match=r"at step 5:.*last good checkpoint is kept"):
        experiments.run_training(
            "maml-sine",
            tmp_path,
            overrides={**SMALL, "steps": 50, "inner_lr": 1e6},
            device="cpu",
            progress=False,
        )
    state = _state(tmp_path)
    assert state["step"] == 1
    assert all(torch.isfinite(t).all() for t in state["learner"]["model"].values())


def test_nan_at_the_first_step_writes_no_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="at step 1:.*no checkpoint was written"):
        experiments.run_training(
            "maml-sine",
            tmp_path,
            overrides={**SMALL, "steps": 50, "meta_lr": 1e30, "inner_lr": 1e30},
            device="cpu",
            progress=False,
        )
    assert not (tmp_path / "checkpoint.pt").exists()


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path):
    experiments.run_training(
        "maml-sine", tmp_path, overrides={**SMALL, "steps": 2}, device="cpu", progress=False
    )
    with pytest.raises(FileExistsError, match="--resume"):
        experiments.run_training(
            "maml-sine", tmp_path, overrides=SMALL, device="cpu", progress=False
        )
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        experiments.run_training(
            "maml-sine", tmp_path / "none", device="cpu", resume=True, progress=False
        )
    with pytest.raises(ValueError, match="cannot change"):
        experiments.run_training(
            "maml-sine",
            tmp_path,
            overrides={"inner_lr": 0.5},
            device="cpu",
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="holds a 'maml-sine' run"):
        experiments.run_training(
            "reptile-sine", tmp_path, device="cpu", resume=True, progress=False
        )


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)


def test_unknown_option(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        experiments.run_training("maml-sine", tmp_path, overrides={"nope": 1}, progress=False)


@pytest.mark.parametrize(
    "name",
    sorted(n for n, e in experiments.EXPERIMENTS.items() if e.learner is SineLearner),
)
def test_every_sine_experiment_trains_and_evaluates(tmp_path, name):
    summary = experiments.run_training(
        name, tmp_path, overrides={**SMALL, "steps": 10}, device="cpu", progress=False
    )
    assert summary["step"] == 10
    parser_opts = type(
        "Opts", (), {"shots": 5, "inner_steps": 2, "num_tasks": 20, "inner_lr": None, "seed": 1}
    )
    result = experiments.run_evaluation(name, tmp_path, parser_opts, device="cpu")
    assert len(result["mse_by_step"]) == 3 and result["mse"] == pytest.approx(
        result["mse_by_step"][-1], abs=1e-6
    )
    assert result["mse"] > 0


@pytest.mark.slow
def test_maml_learns_to_adapt(tmp_path):
    """A short run already beats the untrained network after one step on held-out tasks."""
    from mlcourse.experiments import sine

    experiments.run_training(
        "maml-sine", tmp_path, overrides={"steps": 1500}, device="cpu", progress=False
    )
    learner, _ = experiments.load_learner("maml-sine", tmp_path, "cpu")
    trained = sine.evaluate(
        learner.model, learner.params, 0.01, shots=10, inner_steps=1, num_tasks=500
    )
    fresh = sine.SineLearner(sine.SineConfig(), "cpu")
    untrained = sine.evaluate(
        fresh.model, fresh.params, 0.01, shots=10, inner_steps=1, num_tasks=500
    )
    assert trained["mse"] < 2.0 < untrained["mse"]
    # adapting helps the meta-learned initialisation
    assert trained["mse_by_step"][1] < trained["mse_by_step"][0]


def test_checkpoint_from_another_device_type_loads_with_a_warning(tmp_path):
    """A run trained on a GPU saves CUDA generator states (16 bytes); a CPU can still evaluate
    or resume it, seeded from that state."""
    from mlcourse.experiments.training import save_checkpoint

    experiments.run_training(
        "maml-sine", tmp_path, overrides={**SMALL, "steps": 2}, device="cpu", progress=False
    )
    state = load_checkpoint(tmp_path, "cpu")
    state["learner"]["generator"] = torch.arange(16, dtype=torch.uint8)  # a CUDA-sized state
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.warns(UserWarning, match="another kind of device"):
        learner, _ = experiments.load_learner("maml-sine", tmp_path, "cpu")
    assert learner.generator.initial_seed() == sum(range(16))


def _sine_losses(config, steps):
    from mlcourse.experiments import sine

    learner = sine.SineLearner(config, "cpu")
    return learner, [learner.step(i).item() for i in range(steps)]


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_compiled_sine_training_follows_eager(algorithm):
    """A real torch.compile (about 20 s the first time on a CPU): the compiled meta-loss is
    used and trains as eager does."""
    from mlcourse.experiments import sine

    small = dict(algorithm=algorithm, meta_batch_size=4, hidden="8,8")
    _, eager = _sine_losses(sine.SineConfig(**small), 5)
    learner, compiled = _sine_losses(sine.SineConfig(**small, compile=True), 5)
    assert learner.compile_info["compiled"] is True
    assert learner.compile_info["compiled_max_grad_diff"] < 1e-5
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_a_compiled_meta_loss_that_disagrees_falls_back_to_eager(monkeypatch):
    from mlcourse.algorithms import maml
    from mlcourse.experiments import sine

    def first_order_compiler(fn):  # what a compiler dropping double backward would compute
        return lambda m, p, t: maml.meta_loss(
            m, p, t, loss_fn=torch.nn.functional.mse_loss, inner_lr=0.01, first_order=True
        )

    monkeypatch.setattr(torch, "compile", first_order_compiler)
    small = dict(meta_batch_size=4, hidden="8,8")
    _, eager = _sine_losses(sine.SineConfig(**small), 3)
    with pytest.warns(UserWarning, match="eager mode: the compiled meta-gradient differs"):
        learner, losses = _sine_losses(sine.SineConfig(**small, compile=True), 3)
    assert learner.compile_info["compiled"] is False
    assert losses == eager  # exactly: the eager meta-loss was used throughout
    with pytest.raises(ValueError, match="compile is for MAML"):
        sine.SineConfig(algorithm="reptile", compile=True)
