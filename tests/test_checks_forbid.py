"""An exercise that asks for an implementation refuses answers that call the package's own.

Each answer below is right in value, because it calls the function the course ships for that
very exercise (or the check's own reference), so every check it goes to would pass it if the
check did not look at how the answer got its value.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mlcourse.algorithms import fewshot, maml, rl2, unified
from mlcourse.algorithms.metagenrl import soft_update
from mlcourse.course import checks as check
from mlcourse.course.checks import lesson00, lesson03, lesson05
from mlcourse.rl import dice
from mlcourse.rl.bandits import BayesOptimal
from mlcourse.rl.returns import gae


def meta_test_with_adapt(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    params = dict(model.named_parameters())
    adapted = maml.adapt(
        model,
        params,
        x_support,
        y_support,
        loss_fn=F.mse_loss,
        inner_lr=inner_lr,
        num_inner_steps=num_inner_steps,
    )
    return functional_call(model, adapted, (x_query,)).detach()


def maml_step_with_meta_loss(model, meta_optimizer, tasks, inner_lr):
    meta_optimizer.zero_grad()
    params = dict(model.named_parameters())
    loss = maml.meta_loss(model, params, tasks, loss_fn=F.mse_loss, inner_lr=inner_lr)
    loss.backward()
    meta_optimizer.step()
    return loss.item()


def conv_step_with_adapt(model, params, x_support, y_support, inner_lr):
    return maml.adapt(
        model, params, x_support, y_support, loss_fn=F.cross_entropy, inner_lr=inner_lr
    )


ANSWERS = {  # check -> (an answer that calls the package, the function it calls)
    "support_query_split": (
        lambda x, y, k_support: lesson00._reference(x, y, k_support),
        "mlcourse.course.checks.lesson00._reference",
    ),
    "inner_update": (
        lambda model, params, x_s, y_s, inner_lr: maml.adapt(
            model, params, x_s, y_s, loss_fn=F.mse_loss, inner_lr=inner_lr
        ),
        "mlcourse.algorithms.maml.adapt",
    ),
    "maml_meta_loss": (
        lambda model, params, tasks, inner_lr, num_inner_steps: maml.meta_loss(
            model,
            params,
            tasks,
            loss_fn=F.mse_loss,
            inner_lr=inner_lr,
            num_inner_steps=num_inner_steps,
        ),
        "mlcourse.algorithms.maml.meta_loss",
    ),
    "fixed_maml_step": (maml_step_with_meta_loss, "mlcourse.algorithms.maml.meta_loss"),
    "fixed_meta_test": (meta_test_with_adapt, "mlcourse.algorithms.maml.adapt"),
    "k2_gradients": (lesson03.k2_reference, "mlcourse.course.checks.lesson03.k2_reference"),
    "protonet_logits": (fewshot.protonet_logits, "mlcourse.algorithms.fewshot.protonet_logits"),
    "maml_conv_step": (conv_step_with_adapt, "mlcourse.algorithms.maml.adapt"),
    "fixed_protonet_loss": (
        lambda model, tasks, n_way: fewshot.protonet_loss(model, tasks, n_way=n_way)[0],
        "mlcourse.algorithms.fewshot.protonet_loss",
    ),
    "ucb1_scores": (
        functools.partial(lesson05._ucb1_reference),
        "mlcourse.course.checks.lesson05._ucb1_reference",
    ),
    "bayes_optimal_value": (
        lambda num_arms, num_pulls: BayesOptimal(num_arms, num_pulls).value,
        "mlcourse.rl.bandits.BayesOptimal.__init__",
    ),
    "rl2_input": (
        lambda obs, a, r, d, num_states, num_actions: rl2.rl2_inputs(
            obs, a, r, d, num_states=num_states, num_actions=num_actions
        ),
        "mlcourse.algorithms.rl2.rl2_inputs",
    ),
    "trial_advantages": (
        lambda rewards, values, gamma, lam: gae(rewards, values, gamma=gamma, lam=lam),
        "mlcourse.rl.returns.gae",
    ),
    "reinforce_loss": (
        lambda logp, returns: dice.reinforce_surrogate(logp, returns),
        "mlcourse.rl.dice.reinforce_surrogate",
    ),
    "magic_box": (dice.magic_box, "mlcourse.rl.dice.magic_box"),
    "soft_update": (soft_update, "mlcourse.algorithms.metagenrl.soft_update"),
    "outer_step": (unified.outer_step, "mlcourse.algorithms.unified.outer_step"),
    "bandit_inner_step": (
        unified.bandit_inner_step,
        "mlcourse.algorithms.unified.bandit_inner_step",
    ),
    "blackbox_predict": (
        lambda model, x_support, y_support, x_query: model(x_support, y_support, x_query),
        "mlcourse.algorithms.unified.BlackBoxRegressor.forward",
    ),
}


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_an_answer_that_calls_the_package_is_refused(name):
    answer, calls = ANSWERS[name]
    result = getattr(check, name)(answer)
    assert not result.passed and result.points == 0, result
    assert result.message == (
        f"your code calls {calls}, the package's own implementation of what this exercise "
        "asks you to write"
    )
    assert "write it yourself" in result.hint


def test_every_check_with_a_package_implementation_forbids_it():
    forbidding = {name for name, c in check.REGISTRY.items() if c["forbid"]}
    assert set(ANSWERS) <= forbidding
    assert set(check.REGISTRY) - forbidding == {"per_task_mse"}  # nothing in the package does it


def test_guards_are_removed_after_each_check():
    before = maml.adapt.__code__
    check.inner_update(ANSWERS["inner_update"][0])
    assert maml.adapt.__code__ is before
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    x = torch.randn(4, 1)
    adapted = maml.adapt(
        model, dict(model.named_parameters()), x, x, loss_fn=F.mse_loss, inner_lr=0.1
    )
    assert set(adapted) == {"weight", "bias"}  # the learner may use it outside the checks


def test_under_the_grader_an_older_copy_of_the_function_is_refused_too(monkeypatch):
    """`mlcourse grade` imports the package afresh before each check cell, so a notebook may
    hold the function object from before: the same source, another object."""
    import types

    from mlcourse.course.checks import _core

    adapt = maml.adapt
    older = types.FunctionType(adapt.__code__, adapt.__globals__, adapt.__name__)
    older.__defaults__, older.__kwdefaults__ = adapt.__defaults__, adapt.__kwdefaults__

    def answer(model, params, x_s, y_s, inner_lr):
        return older(model, params, x_s, y_s, loss_fn=F.mse_loss, inner_lr=inner_lr)

    monkeypatch.setattr(_core, "GRADING", True)
    result = check.inner_update(answer)
    assert not result.passed and "calls mlcourse.algorithms.maml.adapt" in result.message
    assert older.__code__ is adapt.__code__  # put back
