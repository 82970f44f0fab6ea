"""The package on a CUDA device: every experiment trains and evaluates there through the
command line, and the meta-gradient computed on the GPU is the CPU's. Skipped (and reported
as skipped) where no CUDA device is present; CI never needs one."""

import json

import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms.maml import meta_loss
from mlcourse.course.cli import main
from mlcourse.experiments import EXPERIMENTS
from mlcourse.models import MLP
from mlcourse.tasks import Sinusoid

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# A few iterations of a small version of each experiment family.
TRAIN = {
    "sine": ["--steps", "5", "--meta-batch-size", "4", "--hidden", "8,8"],
    "chars": ["--steps", "3", "--hidden-channels", "8", "--k-query", "2"],
    "rl2": ["--steps", "2", "--trials-per-step", "8", "--hidden-size", "16"],
    "nav": ["--steps", "1", "--meta-batch-size", "2", "--trajectories", "4", "--hidden", "8,8"],
    "metagenrl": ["--steps", "30", "--warmup", "10", "--batch-size", "16", "--hidden", "16"],
}
EVAL = {
    "sine": ["--shots", "5", "--inner-steps", "2", "--num-tasks", "10"],
    "chars": ["--episodes", "4", "--k-query", "2"],
    "rl2-bandit": ["--episodes", "8"],
    "rl2-mdp": ["--trials", "8"],
    "nav": ["--inner-steps", "1", "--trajectories", "4", "--goals", "2"],
    "metagenrl": ["--env", "navigation", "--seeds", "1", "--steps", "50"],
}


def _family(name: str) -> str:
    if name.endswith("-sine"):
        return "sine"
    if name.endswith("-chars"):
        return "chars"
    if name.startswith("rl2-"):
        return "rl2"
    if name == "metagenrl":
        return name
    return "nav"


def _one_json(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_trains_and_evaluates_on_cuda(name, tmp_path, capsys):
    family = _family(name)
    run_dir = str(tmp_path / "run")
    argv = ["train", name, "--out", run_dir, "--device", "cuda", "--no-progress", "--json"]
    assert main(argv + TRAIN[family]) == 0
    first = _one_json(capsys.readouterr().out)["step"]
    # resuming loads the checkpoint (random-number generators included) onto the GPU
    more = str(2 * first)
    assert main([*argv, "--resume", *TRAIN[family], "--steps", more]) == 0
    assert _one_json(capsys.readouterr().out)["step"] == 2 * first
    eval_args = EVAL[name] if name in EVAL else EVAL[family]
    argv = ["eval", name, "--checkpoint", run_dir, "--device", "cuda", "--json", *eval_args]
    assert main(argv) == 0
    result = _one_json(capsys.readouterr().out)
    assert result["experiment"] == name and result["trained_steps"] > 0


def test_meta_gradient_on_cuda_equals_the_cpu_one():
    torch.manual_seed(0)
    model = MLP().double()
    tasks = Sinusoid().sample(6, 10, 10, generator=torch.Generator().manual_seed(1))
    tasks = tasks.to(torch.float64)
    grads = {}
    for device in ("cpu", "cuda"):
        params = {k: v.detach().to(device).requires_grad_() for k, v in model.named_parameters()}
        on_device = tasks.to(device)
        model.to(device)
        loss = meta_loss(
            model, params, on_device, loss_fn=F.mse_loss, inner_lr=0.01, num_inner_steps=2
        )
        grads[device] = torch.autograd.grad(loss, list(params.values()))
    for cpu, cuda in zip(grads["cpu"], grads["cuda"], strict=True):
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-9, atol=1e-11)


def _relation_pairs():
    from mlcourse.algorithms import unified

    return {
        "maml-sine": (unified.MAMLSine(), unified.SineFamily()),
        "blackbox-sine": (unified.BlackBoxSine(hidden_size=8), unified.SineFamily()),
        "maml-bandit": (unified.MAMLBandit(), unified.BanditFamily(num_arms=5, num_pulls=10)),
        "blackbox-bandit": (
            unified.BlackBoxBandit(hidden_size=8),
            unified.BanditFamily(num_arms=5, num_pulls=10),
        ),
        "protonet-chars": (
            unified.ProtoNetCharacters(hidden_channels=8),
            unified.CharactersFamily(k_shot=2, k_query=2),
        ),
    }


@pytest.mark.parametrize("name", sorted(_relation_pairs()))
def test_the_one_outer_loop_runs_every_learner_on_cuda(name):
    from mlcourse.algorithms import unified

    learner, family = _relation_pairs()[name]
    row = unified.compare(
        learner, family, steps=2, meta_batch_size=2, meta_lr=1e-3, eval_tasks=4, device="cuda"
    )
    assert all(p.device.type == "cuda" for p in row["params"].values())
    assert len(row["losses"]) == 2 and row["saved_bytes"] > 0
