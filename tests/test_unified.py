"""The one outer loop of lesson 09 and its four learners: properties that state the mathematics
(zero step size is the identity, the DiCE meta-gradient is unbiased, exactly), resets between
tasks, clear errors, and a seeded budget that lowers each meta-loss."""

from __future__ import annotations

import argparse
import itertools
import math

import pytest
import torch

from mlcourse import experiments
from mlcourse.algorithms import unified as R
from mlcourse.envs import BernoulliBanditVectorEnv
from mlcourse.experiments.unified import ROWS, OuterLoopLearner


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small networks and many small steps: one CPU thread is fastest (and stable under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Task families


def test_bandit_family_pulls_follow_the_arm_probabilities():
    family = R.BanditFamily(num_arms=3)
    tasks = R.BanditTasks(probs=torch.tensor([[0.0, 1.0, 0.25]]), num_pulls=10)
    rewards = family.pull(tasks, torch.tensor([[0, 1] * 500 + [2] * 4000]), _gen())
    assert rewards[0, :1000:2].sum() == 0 and rewards[0, 1:1000:2].sum() == 500
    assert abs(rewards[0, 1000:].mean().item() - 0.25) < 0.03


def test_families_are_seeded():
    a = R.BanditFamily().sample(4, _gen(3)).probs
    b = R.BanditFamily().sample(4, _gen(3)).probs
    assert torch.equal(a, b) and a.shape == (4, 5)


@pytest.mark.parametrize("bad", [torch.tensor([0, 1]), torch.zeros(3, 2, dtype=torch.long)])
def test_bandit_pull_rejects_wrong_action_shapes(bad):
    tasks = R.BanditFamily().sample(2, _gen())
    with pytest.raises(ValueError, match=r"\(num_tasks=2, m\)"):
        R.BanditFamily.pull(tasks, bad)


# ---------------------------------------------------------------------------------------------
# MAML on bandits


def test_bandit_inner_step_with_zero_lr_is_the_identity():
    logits = torch.randn(4, generator=_gen(), requires_grad=True)
    actions = torch.randint(4, (3, 6), generator=_gen(1))
    rewards = torch.randint(2, (3, 6), generator=_gen(2)).float()
    new = R.bandit_inner_step(logits, actions, rewards, 0.0)
    assert torch.equal(new, logits.detach().expand(3, -1))


def test_bandit_inner_step_is_manual_policy_gradient_per_task():
    logits = torch.randn(3, generator=_gen(), dtype=torch.float64)
    actions = torch.tensor([[0, 2], [1, 1]])
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    new = R.bandit_inner_step(logits, actions, rewards, 0.3, baseline=0.5)
    pi = torch.softmax(logits, 0)
    eye = torch.eye(3, dtype=torch.float64)
    for t in range(2):  # ∇ log π(a) = e_a − π
        g = sum((eye[a] - pi) * (r - 0.5) for a, r in zip(actions[t], rewards[t], strict=True))
        torch.testing.assert_close(new[t], logits + 0.3 * g / 2)


def _exact_meta_objective(logits, inner_lr, probs, m):
    """F(θ) = Σ over every outcome (arms and rewards of m pulls) of P_θ(outcome) R(θ')."""
    pi = torch.softmax(logits, 0)
    total = 0.0
    k = probs.shape[0]
    for pulls in itertools.product(range(k), (0.0, 1.0), repeat=m):
        arms = torch.tensor([pulls[0::2]])
        rewards = torch.tensor([pulls[1::2]], dtype=probs.dtype)
        p_outcome = torch.prod(pi[arms[0]]) * torch.prod(
            torch.where(rewards[0] > 0, probs[arms[0]], 1 - probs[arms[0]])
        )
        adapted = R.bandit_inner_step(logits, arms, rewards, inner_lr)
        total = total + p_outcome * (torch.softmax(adapted[0], 0) * probs).sum()
    return total


def _outcomes(k, m, logits, probs):
    pi = torch.softmax(logits.detach(), 0)
    for pulls in itertools.product(range(k), (0.0, 1.0), repeat=m):
        arms = torch.tensor([pulls[0::2]])
        rewards = torch.tensor([pulls[1::2]], dtype=probs.dtype)
        weight = torch.prod(pi[arms[0]]) * torch.prod(
            torch.where(rewards[0] > 0, probs[arms[0]], 1 - probs[arms[0]])
        )
        yield arms, rewards, weight


@pytest.mark.parametrize("m", [1, 2])
def test_bandit_dice_meta_gradient_is_exactly_unbiased(m):
    """Averaged over every outcome with its probability, the DiCE estimate's gradient equals
    the exact gradient of F(θ) = E[R(θ')], in θ and in the step size, in float64."""
    k = 3
    logits = torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64, requires_grad=True)
    log_lr = torch.tensor(math.log(0.7), dtype=torch.float64, requires_grad=True)
    probs = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
    exact = torch.autograd.grad(
        _exact_meta_objective(logits, log_lr.exp(), probs, m), [logits, log_lr]
    )
    mean_value, mean_grad = 0.0, [torch.zeros_like(logits), torch.zeros_like(log_lr)]
    for arms, rewards, weight in _outcomes(k, m, logits, probs):
        value = R.bandit_maml_objective(logits, log_lr.exp(), probs[None], arms, rewards)[0]
        grads = torch.autograd.grad(value, [logits, log_lr])
        mean_value += weight * value.detach()
        mean_grad = [a + weight * g for a, g in zip(mean_grad, grads, strict=True)]
    with torch.no_grad():
        torch.testing.assert_close(
            mean_value, _exact_meta_objective(logits, log_lr.exp(), probs, m)
        )
    for got, want in zip(mean_grad, exact, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_bandit_meta_gradient_without_the_magic_box_is_biased():
    """The reference test can fail: dropping the score-function term changes the average."""
    k, m = 3, 2
    logits = torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64, requires_grad=True)
    probs = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
    exact = torch.autograd.grad(_exact_meta_objective(logits, 0.7, probs, m), logits)[0]
    naive = torch.zeros_like(logits)
    for arms, rewards, weight in _outcomes(k, m, logits, probs):
        adapted = R.bandit_inner_step(logits, arms, rewards, 0.7)
        value = (torch.softmax(adapted[0], 0) * probs).sum()
        naive += weight * torch.autograd.grad(value, logits)[0]
    assert (naive - exact).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Black-box learners


def test_blackbox_regressor_resets_between_tasks():
    """A task's prediction is the same alone or in a batch, whatever the other tasks hold."""
    torch.manual_seed(0)
    model = R.BlackBoxRegressor(hidden_size=16)
    tasks = R.SineFamily().sample(3, _gen())
    batch = model(tasks.x_support, tasks.y_support, tasks.x_query)
    alone = model(tasks.x_support[1:2], tasks.y_support[1:2], tasks.x_query[1:2])
    torch.testing.assert_close(batch[1:2], alone)
    other = R.SineFamily().sample(3, _gen(5))
    mixed = model(
        torch.cat([other.x_support[:1], tasks.x_support[1:2]]),
        torch.cat([other.y_support[:1], tasks.y_support[1:2]]),
        torch.cat([other.x_query[:1], tasks.x_query[1:2]]),
    )
    torch.testing.assert_close(mixed[1:2], alone)


def test_blackbox_regressor_prefixes_match_truncated_support():
    torch.manual_seed(0)
    model = R.BlackBoxRegressor(hidden_size=8)
    tasks = R.SineFamily().sample(2, _gen())
    every = model(tasks.x_support, tasks.y_support, tasks.x_query, all_prefixes=True)
    three = model(tasks.x_support[:, :3], tasks.y_support[:, :3], tasks.x_query)
    torch.testing.assert_close(every[:, 2], three)


def test_blackbox_bandit_resets_between_trials():
    """The policy's first pull in every trial comes from the same (zero) hidden state."""
    learner = R.BlackBoxBandit(hidden_size=16)
    params = learner.init_params(_gen())
    trials = learner.play(params, R.BanditFamily().sample(8, _gen(1)), _gen(2))
    logits = torch.func.functional_call(learner.policy, params, (trials.inputs,))[0]
    assert torch.allclose(logits[0], logits[0, :1].expand_as(logits[0]))
    assert not torch.allclose(logits[-1], logits[-1, :1].expand_as(logits[-1]))


@pytest.mark.parametrize(
    "xs, ys", [(torch.zeros(4, 1), torch.zeros(4, 1)), (torch.zeros(2, 4, 1), torch.zeros(2, 3, 1))]
)
def test_blackbox_regressor_rejects_bad_shapes(xs, ys):
    model = R.BlackBoxRegressor(hidden_size=4)
    with pytest.raises(ValueError, match="unsqueeze"):
        model(xs, ys, torch.zeros(2, 5, 1))


# ---------------------------------------------------------------------------------------------
# The outer loop


def test_outer_loop_rejects_a_learner_of_the_other_kind():
    with pytest.raises(TypeError, match="pair each learner"):
        R.outer_loop(
            R.MAMLSine(),
            R.BanditFamily(),
            steps=1,
            meta_batch_size=2,
            meta_lr=1e-3,
            generator=_gen(),
        )


def test_learners_reject_tasks_of_the_other_kind():
    learner = R.MAMLBandit()
    with pytest.raises(TypeError, match="BanditTasks"):
        learner.meta_loss(learner.init_params(), R.SineFamily().sample(2, _gen()), _gen())


def test_maml_bandit_needs_pulls_left_to_exploit():
    learner = R.MAMLBandit(support_pulls=10)
    with pytest.raises(ValueError, match="support_pulls = 10"):
        learner.evaluate(learner.init_params(), R.BanditFamily(num_pulls=10).sample(2, _gen()))


def test_outer_loop_is_seeded():
    runs = [
        R.outer_loop(
            R.MAMLSine(), R.SineFamily(), steps=3, meta_batch_size=4, meta_lr=1e-3, generator=_gen()
        )
        for _ in range(2)
    ]
    assert runs[0].losses == runs[1].losses


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.parametrize(
    "make, family, steps, batch, lr",
    [
        (R.MAMLSine, R.SineFamily(), 100, 10, 3e-3),
        (lambda: R.BlackBoxSine(hidden_size=32), R.SineFamily(), 150, 25, 3e-3),
        (R.MAMLBandit, R.BanditFamily(), 60, 64, 0.05),
    ],
    ids=["maml-sine", "blackbox-sine", "maml-bandit"],
)
def test_outer_loop_lowers_the_meta_loss(make, family, steps, batch, lr):
    run = R.outer_loop(
        make(), family, steps=steps, meta_batch_size=batch, meta_lr=lr, generator=_gen()
    )
    assert _mean(run.losses[-20:]) < _mean(run.losses[:20]) - 0.05


def test_outer_loop_teaches_the_blackbox_bandit_to_beat_random():
    """The REINFORCE surrogate's value is no loss to watch; the reward after training is."""
    learner, family = R.BlackBoxBandit(hidden_size=32), R.BanditFamily()
    params = learner.init_params(_gen())
    held_out = family.sample(500, _gen(99))
    before = learner.evaluate(params, held_out, _gen(1))["final"]
    run = R.outer_loop(
        learner, family, steps=100, meta_batch_size=128, meta_lr=3e-2, generator=_gen(),
        params=params, max_grad_norm=1.0,
    )  # fmt: skip
    after = learner.evaluate(run.params, held_out, _gen(1))["final"]
    assert after > before + 0.03, (before, after)


def test_compare_reports_every_column():
    row = R.compare(
        R.MAMLBandit(), R.BanditFamily(), steps=2, meta_batch_size=8, meta_lr=0.05, eval_tasks=50
    )
    assert set(row["curve"]) == {1, 5, 9} and 0 <= row["final"] <= 1
    assert row["num_params"] == 6 and row["saved_bytes"] > 0 and row["train_seconds"] > 0
    assert "MAML" in R.format_table([row])


# ---------------------------------------------------------------------------------------------
# One learner type: `mlcourse train unified-ROW` and outer_loop drive the same Learner

SMALL = {"steps": 3, "meta_batch_size": 2, "log_every": 1}


def _train(tmp_path, name, **overrides):
    out = tmp_path / name
    experiments.run_training(name, out, overrides={**SMALL, **overrides}, progress=False)
    return out


@pytest.mark.parametrize("row", sorted(ROWS))
def test_mlcourse_train_and_eval_reproduce_compare(tmp_path, row):
    """The CLI's run, evaluated on the lesson's held-out tasks, is the lesson's row: the same
    parameters (same generator draws in the same order), the same tasks, the same figures."""
    name = f"unified-{row}"
    out = _train(tmp_path, name)
    opts = argparse.Namespace(eval_tasks=4)
    figures = experiments.run_evaluation(name, out, opts)
    config = experiments.make_config(
        experiments.get(name).config_cls, {**experiments.get(name).defaults, **SMALL}
    )
    learner, family, eval_family = ROWS[row]()
    lesson = R.compare(
        learner, family, steps=3, meta_batch_size=2, meta_lr=config.meta_lr,
        max_grad_norm=config.max_grad_norm or None, eval_family=eval_family, eval_tasks=4,
    )  # fmt: skip
    assert figures["curve"] == lesson["curve"] and figures["final"] == lesson["final"]
    assert figures["row"] == row and figures["trained_steps"] == 3
    # the trained network alone holds the run's parameters
    weights = torch.load(out / "checkpoint.pt", weights_only=True)["learner"]["params"]
    network = OuterLoopLearner.network(config, {"params": weights})
    assert not network.training
    assert dict(network.named_parameters()).keys() == weights.keys()
    for key, tensor in network.named_parameters():
        assert torch.equal(tensor.detach(), weights[key]), key
        torch.testing.assert_close(tensor, lesson["params"][key].detach())


@pytest.mark.parametrize("name", ["unified-maml-bandit", "unified-blackbox-bandit"])
def test_a_resumed_run_continues_as_the_outer_loop_does(tmp_path, name):
    out = _train(tmp_path, name, steps=2)
    experiments.run_training(name, out, overrides={"steps": 5}, resume=True, progress=False)
    row = experiments.get(name).defaults
    learner, family, _ = ROWS[row["row"]]()
    run = R.outer_loop(
        learner, family, steps=5, meta_batch_size=2, meta_lr=row["meta_lr"], generator=_gen(),
        max_grad_norm=row.get("max_grad_norm"),
    )  # fmt: skip
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["learner"]["params"]
    assert saved.keys() == run.params.keys()
    for key, tensor in saved.items():
        assert torch.equal(tensor, run.params[key].detach()), key


def test_the_outer_loop_learner_checks_what_it_is_given():
    with pytest.raises(ValueError, match="meta_batch_size must be a positive int"):
        R.outer_loop(
            R.MAMLBandit(), R.BanditFamily(), steps=1, meta_batch_size=0, meta_lr=0.1,
            generator=_gen(),
        )  # fmt: skip
    with pytest.raises(ValueError, match="steps must be a positive int"):
        R.outer_loop(
            R.MAMLBandit(), R.BanditFamily(), steps=0, meta_batch_size=2, meta_lr=0.1,
            generator=_gen(),
        )  # fmt: skip
    with pytest.raises(ValueError, match="row"):
        experiments.run_training("unified-maml-bandit", "unused", overrides={"row": "maml-mdp"})


def test_the_family_samples_the_bandits_and_rewards_of_the_vector_env():
    """One sampler for the bandit family: lesson 09's tasks are the environment's."""
    tasks = R.BanditFamily(num_arms=4).sample(6, _gen(3))
    envs = BernoulliBanditVectorEnv(6, num_arms=4, num_pulls=10)
    _, info = envs.reset(seed=3)
    assert torch.equal(tasks.probs, info["probs"])
    actions = torch.tensor([0, 1, 2, 3, 0, 1])
    _, rewards, *_ = envs.step(actions)
    generator = _gen(3)
    R.BanditFamily(num_arms=4).sample(6, generator)  # the env draws its bandits first, too
    assert torch.equal(R.BanditFamily.pull(tasks, actions[:, None], generator)[:, 0], rewards)


def test_softmax_bandit_holds_maml_bandits_parameters():
    learner = R.MAMLBandit(num_arms=3, inner_lr=0.5)
    module = learner.network()
    params = learner.init_params()
    assert {k: v.shape for k, v in module.state_dict().items()} == {
        k: v.shape for k, v in params.items()
    }
    torch.testing.assert_close(module.log_inner_lr.detach(), params["log_inner_lr"].detach())
    torch.testing.assert_close(module(), torch.full((3,), 1 / 3))


def test_a_learner_built_from_the_lessons_objects_evaluates_on_its_family():
    learner, family = R.MAMLBandit(), R.BanditFamily()
    runner = OuterLoopLearner.of(learner, family, meta_batch_size=4, meta_lr=0.05, generator=_gen())
    runner.step(0)
    figures = runner.evaluate(argparse.Namespace(eval_tasks=20))
    assert "row" not in figures and figures["eval_tasks"] == 20
    assert figures == {"eval_tasks": 20, **R.held_out_report(learner, runner.params, family, 20)}
