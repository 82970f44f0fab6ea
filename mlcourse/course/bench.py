"""Speed benchmarks, each measuring the variants side by side in one run.

Rounds alternate between the variants, so that a slow spell on a shared machine hits them
alike; the reported speedup is the median of the per-round ratios.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mlcourse.algorithms.maml import compile_meta_loss, meta_loss, meta_loss_loop, params_of
from mlcourse.models import MLP
from mlcourse.runtime import default_device, make_adam
from mlcourse.tasks import Sinusoid


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step: Callable[[int], None], iters: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for i in range(iters):
        step(i)
    _sync(device)
    return iters / (time.perf_counter() - start)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def maml_sine(
    *,
    meta_batch_size: int = 25,
    k_shot: int = 10,
    num_inner_steps: int = 1,
    iters: int = 40,
    rounds: int = 5,
    device: torch.device | str | None = None,
    compile: bool = False,
) -> dict:
    """Meta-training iterations per second: vectorized ``meta_loss`` vs the per-task loop.

    One iteration is a full second-order MAML update (meta-loss, backward, Adam step) on a
    meta-batch of sinusoid tasks with the paper's 1-40-40-1 network.

    Args:
        meta_batch_size: tasks per iteration.
        k_shot: support and query points per task.
        num_inner_steps: inner steps.
        iters: iterations timed per round and variant.
        rounds: alternating rounds.
        device: where to run (default: CUDA if available).
        compile: also time ``torch.compile`` of the vectorized meta-loss.

    Returns:
        A dict with ``vectorized_it_per_s``, ``loop_it_per_s``, ``speedup`` (and
        ``compiled_it_per_s``, ``compiled_speedup`` with ``compile=True``).
    """
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(0)
    base = MLP().to(device)
    pool = [
        Sinusoid().sample(
            meta_batch_size,
            k_shot,
            k_shot,
            device=device,
            generator=torch.Generator().manual_seed(i),
        )
        for i in range(8)
    ]

    kwargs = {"loss_fn": F.mse_loss, "inner_lr": 0.01, "num_inner_steps": num_inner_steps}
    variants = {
        "vectorized": _training_step(base, pool, lambda m, p, t: meta_loss(m, p, t, **kwargs)),
        "loop": _training_step(base, pool, lambda m, p, t: meta_loss_loop(m, p, t, **kwargs)),
    }
    result: dict = {}
    if compile:
        model = copy.deepcopy(base)
        compiled, info = compile_meta_loss(model, params_of(model), pool[0], **kwargs)
        result.update(info)
        if compiled is not None:
            variants["compiled"] = _training_step(base, pool, compiled)
    med, ratios, rates = _side_by_side(variants, iters, rounds, device)
    result = {
        "benchmark": "maml-sine",
        "device": device_name(device),
        "torch": torch.__version__,
        "meta_batch_size": meta_batch_size,
        "k_shot": k_shot,
        "num_inner_steps": num_inner_steps,
        "second_order": True,
        "rounds": rounds,
        "iters_per_round": iters,
        "vectorized_it_per_s": round(med["vectorized"], 2),
        "loop_it_per_s": round(med["loop"], 2),
        "speedup": round(statistics.median(ratios), 2),
        "speedup_by_round": [round(r, 2) for r in ratios],
        **result,
    }
    if "compiled" in rates:
        cratios = [c / lp for c, lp in zip(rates["compiled"], rates["loop"], strict=True)]
        result["compiled_it_per_s"] = round(med["compiled"], 2)
        result["compiled_speedup"] = round(statistics.median(cratios), 2)
    return result


def _training_step(base: torch.nn.Module, pool: list, loss_of) -> Callable[[int], None]:
    """``step(i)``: one meta-training iteration (loss, backward, Adam) on its own copy of
    ``base``, with the task batch ``pool[i % len(pool)]``; ``loss_of(model, params, tasks)``
    returns the scalar meta-loss."""
    model = copy.deepcopy(base)
    params = params_of(model)
    opt = make_adam(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss_of(model, params, pool[i % len(pool)]).backward()
        opt.step()

    return step


def _side_by_side(
    variants: dict,
    iters: int,
    rounds: int,
    device: torch.device,
    fast: str = "vectorized",
    slow: str = "loop",
):
    """Times each variant ``iters`` steps per round, alternating; returns the median rates,
    the per-round ratios ``fast`` / ``slow``, and every round's rates."""
    for step in variants.values():  # warm-up (and, for compile, trigger compilation)
        for i in range(3):
            step(i)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            rates[name].append(_rate(step, iters, device))
    med = {name: statistics.median(r) for name, r in rates.items()}
    ratios = [f / sl for f, sl in zip(rates[fast], rates[slow], strict=True)]
    return med, ratios, rates


def maml_conv4(
    *,
    meta_batch_size: int = 32,
    n_way: int = 5,
    k_shot: int = 1,
    k_query: int = 15,
    num_inner_steps: int = 1,
    hidden_channels: int = 64,
    iters: int = 3,
    rounds: int = 3,
    device: torch.device | str | None = None,
    compile: bool = False,
) -> dict:
    """Meta-training iterations per second of MAML on a Conv4: vectorized vs per-task loop.

    One iteration is a full second-order MAML update (meta-loss, backward, Adam step) on a
    meta-batch of 5-way 1-shot procedural-character episodes, as in the MAML paper's
    Omniglot experiment (meta-batch 32, one inner step of 0.4, 15 queries per class).

    Args:
        meta_batch_size: episodes per iteration.
        n_way, k_shot, k_query: the episodes' shape.
        num_inner_steps: inner steps.
        hidden_channels: Conv4 width.
        iters: iterations timed per round and variant.
        rounds: alternating rounds.
        device: where to run (default: CUDA if available).
        compile: not supported for this benchmark (reported, not failed).

    Returns:
        A dict with ``vectorized_it_per_s``, ``loop_it_per_s`` and ``speedup``.
    """
    from mlcourse.algorithms.fewshot import maml_classification_loss, maml_classification_loss_loop
    from mlcourse.models import Conv4
    from mlcourse.tasks import ProceduralCharacters

    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(0)
    base = Conv4(out_features=n_way, hidden_channels=hidden_channels).to(device)
    data = ProceduralCharacters()
    gen = torch.Generator().manual_seed(0)
    pool = [
        data.sample(meta_batch_size, n_way, k_shot, k_query, generator=gen, device=device)
        for _ in range(2)
    ]
    kwargs = {"inner_lr": 0.4, "num_inner_steps": num_inner_steps}

    variants = {
        "vectorized": _training_step(
            base, pool, lambda m, p, t: maml_classification_loss(m, p, t, **kwargs)[0]
        ),
        "loop": _training_step(
            base, pool, lambda m, p, t: maml_classification_loss_loop(m, p, t, **kwargs)[0]
        ),
    }
    med, ratios, _ = _side_by_side(variants, iters, rounds, device)
    result = {
        "benchmark": "maml-conv4",
        "device": device_name(device),
        "torch": torch.__version__,
        "meta_batch_size": meta_batch_size,
        "n_way": n_way,
        "k_shot": k_shot,
        "k_query": k_query,
        "num_inner_steps": num_inner_steps,
        "hidden_channels": hidden_channels,
        "second_order": True,
        "rounds": rounds,
        "iters_per_round": iters,
        "vectorized_it_per_s": round(med["vectorized"], 3),
        "loop_it_per_s": round(med["loop"], 3),
        "speedup": round(statistics.median(ratios), 2),
        "speedup_by_round": [round(r, 2) for r in ratios],
    }
    if compile:
        result["compiled_error"] = "torch.compile is only benchmarked for maml-sine"
    return result


def bandit_env(
    *,
    num_envs: int = 256,
    num_arms: int = 5,
    num_pulls: int = 100,
    iters: int = 200,
    rounds: int = 5,
    device: torch.device | str | None = None,
    compile: bool = False,
) -> dict:
    """Environment steps per second: the batched bandit vs Gymnasium's ``SyncVectorEnv``.

    Both step ``num_envs`` Bernoulli bandits with random actions (drawn before timing), the
    batched one as tensor operations on ``device``, ``SyncVectorEnv`` as a Python loop over
    ``num_envs`` copies of the single environment. Trials end and restart (next-step
    autoreset) in both. Rounds alternate; the speedup is the median per-round ratio.

    Returns:
        A dict with ``batched_steps_per_s``, ``sync_steps_per_s`` (environment steps: one
        step of one environment) and ``speedup``.
    """
    import gymnasium as gym

    from mlcourse.envs import BernoulliBanditEnv, BernoulliBanditVectorEnv

    device = torch.device(device) if device is not None else default_device()
    batched = BernoulliBanditVectorEnv(num_envs, num_arms, num_pulls, device=device)
    batched.reset(seed=0)
    sync = gym.vector.SyncVectorEnv(
        [lambda: BernoulliBanditEnv(num_arms, num_pulls) for _ in range(num_envs)]
    )
    sync.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    actions = torch.randint(num_arms, (64, num_envs), generator=gen)
    batched_actions, sync_actions = actions.to(device), actions.numpy()
    variants = {
        "vectorized": lambda i: batched.step(batched_actions[i % 64]),
        "loop": lambda i: sync.step(sync_actions[i % 64]),
    }
    med, ratios, _ = _side_by_side(variants, iters, rounds, device)
    sync.close()
    return {
        "benchmark": "bandit-env",
        "device": device_name(device),
        "torch": torch.__version__,
        "num_envs": num_envs,
        "num_arms": num_arms,
        "num_pulls": num_pulls,
        "rounds": rounds,
        "iters_per_round": iters,
        "batched_steps_per_s": round(med["vectorized"] * num_envs, 1),
        "sync_steps_per_s": round(med["loop"] * num_envs, 1),
        "speedup": round(statistics.median(ratios), 2),
        "speedup_by_round": [round(r, 2) for r in ratios],
        **(
            {"compiled_error": "torch.compile is not benchmarked for environments"}
            if compile
            else {}
        ),
    }


def rl2_bf16(
    *,
    task: str = "mdp",
    trials_per_step: int = 256,
    hidden_size: int = 256,
    iters: int = 2,
    rounds: int = 3,
    device: torch.device | str | None = None,
    compile: bool = False,
) -> dict:
    """RL² PPO iterations per second: the GRU in bfloat16 (``--bf16``) vs float32.

    One iteration is what ``mlcourse train rl2-mdp`` (or ``rl2-bandit``) does each step: a
    batch of whole trials (MDPs: 10 episodes of 10 steps; bandits: 100 pulls), then 4 epochs
    of PPO over 4 minibatches. Both learners start from the same weights and seed.

    Returns:
        A dict with ``bf16_it_per_s``, ``float32_it_per_s`` and ``speedup`` (their ratio, the
        median over rounds).
    """
    from mlcourse.algorithms.rl2 import RL2Config
    from mlcourse.experiments.rl2 import RL2Learner

    device = torch.device(device) if device is not None else default_device()
    sizes = {"num_pulls": 100} if task == "bandit" else {}
    learners = {
        name: RL2Learner(
            RL2Config(
                task=task,
                trials_per_step=trials_per_step,
                hidden_size=hidden_size,
                bf16=name == "bf16",
                **sizes,
            ),
            device,
        )
        for name in ("bf16", "float32")
    }
    variants = {name: learner.step for name, learner in learners.items()}
    med, ratios, _ = _side_by_side(variants, iters, rounds, device, "bf16", "float32")
    return {
        "benchmark": "rl2-bf16",
        "device": device_name(device),
        "torch": torch.__version__,
        "task": task,
        "trials_per_step": trials_per_step,
        "hidden_size": hidden_size,
        "rounds": rounds,
        "iters_per_round": iters,
        "bf16_it_per_s": round(med["bf16"], 3),
        "float32_it_per_s": round(med["float32"], 3),
        "speedup": round(statistics.median(ratios), 2),
        "speedup_by_round": [round(r, 2) for r in ratios],
        **({"compiled_error": "torch.compile is not benchmarked for RL²"} if compile else {}),
    }


BENCHMARKS: dict[str, Callable[..., dict]] = {
    "rl2-bf16": rl2_bf16,
    "maml-sine": maml_sine,
    "maml-conv4": maml_conv4,
    "bandit-env": bandit_env,
}
