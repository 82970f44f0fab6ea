"""The command line: --json prints exactly one JSON object; errors say what to do."""

import json
import subprocess
import sys

import pytest

from mlcourse.course.cli import main

SMALL = ["--meta-batch-size", "4", "--k-support", "5", "--hidden", "8,8", "--no-progress"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_json(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_doctor_json_in_a_fresh_process():
    proc = subprocess.run(
        [sys.executable, "-m", "mlcourse", "doctor", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rep = one_json(proc.stdout)
    assert rep["device"]["type"] in {"cpu", "cuda", "mps"}
    assert rep["packages"]["torch"] and rep["python"]
    assert isinstance(rep["widgets"]["will_render"], bool)
    assert isinstance(rep["warnings"], list)


def test_doctor_text(capsys):
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and "device" in out and "torch" in out


def test_doctor_warns_about_threads_on_a_small_cpu(monkeypatch):
    import torch

    from mlcourse.course import doctor

    monkeypatch.setattr(doctor, "_device", lambda: {"type": "cpu", "name": "test"})
    monkeypatch.setattr(doctor.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert any("OMP_NUM_THREADS=1" in w for w in doctor.report()["warnings"])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not any("OMP_NUM_THREADS=1" in w for w in doctor.report()["warnings"])


def test_train_then_eval(tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    code, out, _ = run(
        capsys,
        "train",
        "maml-sine",
        "--out",
        out_dir,
        "--steps",
        "6",
        "--device",
        "cpu",
        "--json",
        *SMALL,
    )
    assert code == 0
    summary = one_json(out)
    assert summary["step"] == 6 and summary["experiment"] == "maml-sine"
    code, out, _ = run(
        capsys,
        "eval",
        "maml-sine",
        "--checkpoint",
        out_dir,
        "--shots",
        "5",
        "--inner-steps",
        "2",
        "--num-tasks",
        "30",
        "--json",
    )
    assert code == 0
    result = one_json(out)
    assert result["trained_steps"] == 6 and len(result["mse_by_step"]) == 3
    assert set(result) >= {"mse", "ci95", "shots", "inner_steps", "num_tasks"}
    # resume to a larger step count
    code, out, _ = run(
        capsys,
        "train",
        "maml-sine",
        "--out",
        out_dir,
        "--steps",
        "9",
        "--resume",
        "--json",
        "--no-progress",
    )
    assert code == 0 and one_json(out)["step"] == 9


def test_common_options_may_come_before_the_experiment(tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    argv = ["train", "--device", "cpu", "--json", "maml-sine", "--out", out_dir, "--steps", "2"]
    code, out, _ = run(capsys, *argv, *SMALL)
    assert code == 0 and one_json(out)["step"] == 2
    code, out, _ = run(
        capsys, "eval", "--json", "--checkpoint", out_dir, "maml-sine", "--shots", "5"
    )
    assert code == 0 and one_json(out)["shots"] == 5


def test_eval_is_deterministic(tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    run(capsys, "train", "metasgd-sine", "--out", out_dir, "--steps", "3", "--json", *SMALL)
    args = ("eval", "metasgd-sine", "--checkpoint", out_dir, "--num-tasks", "20", "--json")
    first = one_json(run(capsys, *args)[1])
    second = one_json(run(capsys, *args)[1])
    assert first["mse"] == second["mse"] and first["inner_lr"] == "learned"


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    code, out, err = run(capsys, "eval", "maml-sine", "--checkpoint", str(tmp_path), "--json")
    assert code == 1 and out == ""
    assert "no checkpoint" in err and "mlcourse train" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["train", "no-such-experiment", "--out", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "unknown command" in err


def test_train_help_lists_the_experiment_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "maml-sine", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--meta-lr" in out and "--inner-lr" in out and "--max-seconds" in out


@pytest.mark.parametrize("command", ["train", "eval"])
def test_every_experiments_help_prints(command, capsys):
    from mlcourse.experiments import EXPERIMENTS

    for name in EXPERIMENTS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, name, "--help"])
        assert exit_info.value.code == 0, name
        assert name in capsys.readouterr().out


def test_bench_json(capsys):
    code, out, _ = run(capsys, "bench", "maml-sine", "--iters", "2", "--rounds", "2", "--json")
    assert code == 0
    result = one_json(out)
    assert result["benchmark"] == "maml-sine" and result["meta_batch_size"] == 25
    assert result["vectorized_it_per_s"] > 0 and result["loop_it_per_s"] > 0
    assert result["speedup"] > 0 and len(result["speedup_by_round"]) == 2


def test_bench_maml_conv4_small():
    from mlcourse.course.bench import maml_conv4

    result = maml_conv4(meta_batch_size=2, hidden_channels=8, k_query=2, iters=1, rounds=2)
    assert result["benchmark"] == "maml-conv4" and result["n_way"] == 5
    assert result["vectorized_it_per_s"] > 0 and result["loop_it_per_s"] > 0
    assert len(result["speedup_by_round"]) == 2


def test_bench_rl2_bf16_small():
    from mlcourse.course.bench import rl2_bf16

    result = rl2_bf16(task="bandit", trials_per_step=8, hidden_size=8, iters=1, rounds=2)
    assert result["benchmark"] == "rl2-bf16" and result["task"] == "bandit"
    assert result["bf16_it_per_s"] > 0 and result["float32_it_per_s"] > 0
    assert len(result["speedup_by_round"]) == 2


def _bench_inputs():
    import torch
    import torch.nn.functional as F

    from mlcourse.models import MLP
    from mlcourse.tasks import Sinusoid

    torch.manual_seed(0)
    tasks = Sinusoid().sample(5, 10, 10, generator=torch.Generator().manual_seed(0))
    return MLP(), tasks, {"loss_fn": F.mse_loss, "inner_lr": 0.01, "num_inner_steps": 1}


def test_bench_compiled_variant_is_checked_against_eager(monkeypatch):
    """The formulation the benchmark compiles gives eager's meta-gradient (run uncompiled here:
    compiling takes a minute), and a compiler that changes the gradient is refused."""
    import torch

    from mlcourse.algorithms import maml

    model, tasks, kwargs = _bench_inputs()
    params = maml.params_of(model)
    monkeypatch.setattr(torch, "compile", lambda fn: fn)
    compiled, info = maml.compile_meta_loss(model, params, tasks, **kwargs)
    assert compiled is not None and "compiled_error" not in info
    assert info["compiled_max_grad_diff"] < 1e-6

    def first_order_compiler(fn):  # what a compiler dropping double backward would compute
        return lambda m, p, t: maml.meta_loss(m, p, t, first_order=True, **kwargs)

    monkeypatch.setattr(torch, "compile", first_order_compiler)
    compiled, info = maml.compile_meta_loss(model, params, tasks, **kwargs)
    assert compiled is None
    assert "differs from eager" in info["compiled_error"]
