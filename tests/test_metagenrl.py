"""MetaGenRL's pieces: the objective's features, its meta-gradient through the policy step,
the replay buffer and the critic's targets."""

import pytest
import torch
from torch.func import functional_call

from mlcourse.algorithms.metagenrl import (
    NUM_FEATURES,
    Actor,
    LearnedObjective,
    ReplayBuffer,
    TD3Settings,
    TwinCritic,
    critic_loss,
    ddpg_loss,
    objective_features,
    objective_meta_loss,
    soft_update,
)
from mlcourse.experiments.metagenrl import MetaGenRLConfig, MetaGenRLLearner


def _setup(action_size=2, dtype=torch.float64):
    torch.manual_seed(0)
    actor = Actor(3, action_size, max_action=2.0).to(dtype)
    critic = TwinCritic(3, action_size).to(dtype)
    gen = torch.Generator().manual_seed(1)
    batch = {
        "obs": torch.randn(16, 3, generator=gen, dtype=dtype),
        "actions": 2 * torch.rand(16, action_size, generator=gen, dtype=dtype) - 1,
        "rewards": torch.randn(16, generator=gen, dtype=dtype),
        "next_obs": torch.randn(16, 3, generator=gen, dtype=dtype),
        "dones": (torch.rand(16, generator=gen) < 0.2).to(dtype),
    }
    params = {n: p.detach() for n, p in actor.named_parameters()}
    return actor, critic, batch, params


def test_features_and_which_of_them_depend_on_the_policy():
    actor, critic, batch, params = _setup()
    params = {n: p.clone().requires_grad_() for n, p in params.items()}
    features = objective_features(actor, params, critic, batch)
    assert features.shape == (16, 2, NUM_FEATURES)
    depends = []
    for k in range(NUM_FEATURES):
        grads = torch.autograd.grad(
            features[..., k].sum(), list(params.values()), retain_graph=True, allow_unused=True
        )
        depends.append(any(g is not None and g.abs().sum() > 0 for g in grads))
    # Q(s, π(s)) and π(s) depend on θ; the advantage is measured against a detached value
    assert depends == [True, False, True, False, False, False]


class MinusValue(torch.nn.Module):
    """The objective whose gradient is DDPG's: −(first feature)."""

    def forward(self, features):
        return -features[:, 0, 0].mean()


def test_the_ddpg_objective_is_one_setting_of_the_learned_one():
    actor, critic, batch, params = _setup()
    at = {n: p.clone().requires_grad_() for n, p in params.items()}
    features = objective_features(actor, at, critic, batch)
    ours = torch.autograd.grad(MinusValue()(features), list(at.values()))
    theirs = torch.autograd.grad(ddpg_loss(actor, at, critic, batch), list(at.values()))
    for a, b in zip(ours, theirs, strict=True):  # equal up to a constant: equal gradients
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and the meta-loss is the value after a (normalised) DDPG step
    step = 0.1
    at = {n: p.clone().requires_grad_() for n, p in params.items()}
    grads = torch.autograd.grad(ddpg_loss(actor, at, critic, batch), list(at.values()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    stepped = {n: p - step * g / norm for (n, p), g in zip(params.items(), grads, strict=True)}
    centre = critic(batch["obs"], batch["actions"])[0].mean()
    expected = ddpg_loss(actor, stepped, critic, batch) + centre
    got = objective_meta_loss(MinusValue(), actor, params, critic, batch, step_size=step)
    assert got.item() == pytest.approx(expected.item(), rel=1e-7)  # the norm has +1e-8


def test_meta_gradient_matches_finite_differences():
    actor, critic, batch, params = _setup()
    objective = LearnedObjective().double()
    loss = objective_meta_loss(objective, actor, params, critic, batch, step_size=0.5)
    grads = torch.autograd.grad(loss, list(objective.parameters()), allow_unused=True)
    # the output bias shifts L_α by a constant: no effect on the step, no gradient
    assert grads[-1] is None
    grads = [
        torch.zeros_like(p) if g is None else g
        for g, p in zip(grads, objective.parameters(), strict=True)
    ]
    direction = [torch.randn_like(p) for p in objective.parameters()]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction, strict=True))
    eps = 1e-6

    def at(sign):
        shifted = {
            n: p.detach() + sign * eps * d
            for (n, p), d in zip(objective.named_parameters(), direction, strict=True)
        }

        class Shifted(torch.nn.Module):
            def forward(self, features):
                return functional_call(objective, shifted, (features,))

        return objective_meta_loss(Shifted(), actor, params, critic, batch, step_size=0.5)

    numeric = (at(1) - at(-1)) / (2 * eps)
    assert analytic.item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-10)
    assert analytic.abs() > 1e-6  # the objective does move the updated policy's value


def test_one_objective_serves_any_action_size():
    objective = LearnedObjective()
    for size in (1, 2, 3):
        actor, critic, batch, params = _setup(size, torch.float32)
        loss = objective_meta_loss(objective, actor, params, critic, batch, step_size=0.1)
        assert loss.shape == () and torch.isfinite(loss)


def test_replay_buffer_wraps_around_and_samples():
    buffer = ReplayBuffer(5, obs_size=1, action_size=1)
    for start in (0, 3, 6):
        x = torch.arange(start, start + 3, dtype=torch.float32)
        buffer.add(x[:, None], x[:, None], x, x[:, None], torch.zeros(3))
    assert len(buffer) == 5
    assert sorted(buffer.data["rewards"].tolist()) == [4.0, 5.0, 6.0, 7.0, 8.0]
    batch = buffer.sample(64, torch.Generator().manual_seed(0))
    assert set(batch["rewards"].tolist()) <= {4.0, 5.0, 6.0, 7.0, 8.0}
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(3, obs_size=1, action_size=1).sample(1, torch.Generator())


def test_critic_learns_a_constant_reward():
    torch.manual_seed(0)
    actor, critic = Actor(2, 1, max_action=1.0), TwinCritic(2, 1)
    target_actor, target_critic = Actor(2, 1, max_action=1.0), TwinCritic(2, 1)
    target_actor.load_state_dict(actor.state_dict())
    target_critic.load_state_dict(critic.state_dict())
    settings = TD3Settings(gamma=0.5)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        obs = torch.randn(64, 2, generator=gen)
        batch = {
            "obs": obs,
            "actions": torch.rand(64, 1, generator=gen) * 2 - 1,
            "rewards": torch.ones(64),
            "next_obs": obs,
            "dones": torch.zeros(64),
        }
        opt.zero_grad()
        critic_loss(critic, target_critic, target_actor, batch, settings, gen).backward()
        opt.step()
        soft_update(target_critic, critic, 0.05)
    q1, q2 = critic(torch.randn(100, 2), torch.zeros(100, 1))
    # r + γ Q = Q  ⇒  Q = 1 / (1 − γ) = 2
    assert q1.mean().item() == pytest.approx(2.0, abs=0.15)
    assert q2.mean().item() == pytest.approx(2.0, abs=0.15)


SMALL = {"steps": 40, "warmup": 10, "batch_size": 16, "hidden": "16", "objective_hidden": "8"}


def test_population_resumes_exactly(tmp_path):
    from mlcourse import experiments
    from mlcourse.experiments.training import load_checkpoint

    experiments.run_training(
        "metagenrl", tmp_path / "a", overrides=SMALL, device="cpu", progress=False
    )
    half = {**SMALL, "steps": 25}
    experiments.run_training(
        "metagenrl", tmp_path / "b", overrides=half, device="cpu", progress=False
    )
    experiments.run_training(
        "metagenrl", tmp_path / "b", overrides=SMALL, device="cpu", resume=True, progress=False
    )
    a, b = (load_checkpoint(tmp_path / d, "cpu")["learner"] for d in "ab")
    for key, value in a["objective"].items():
        assert torch.equal(value, b["objective"][key]), key
    for agent_a, agent_b in zip(a["agents"], b["agents"], strict=True):
        for key, value in agent_a["actor"].items():
            assert torch.equal(value, agent_b["actor"][key]), key
        assert agent_a["returns"] == agent_b["returns"]


def test_meta_test_compares_both_objectives_on_an_unseen_family():
    from mlcourse.algorithms.metagenrl import meta_test

    result = meta_test(LearnedObjective(), "navigation", seeds=2, steps=250)
    assert result["env"] == "navigation" and len(result["learned"]["per_seed"]) == 2
    assert set(result) >= {"learned", "ddpg", "alignment_with_ddpg"}
    assert -1 <= result["alignment_with_ddpg"] <= 1
    for name in ("learned", "ddpg"):
        assert all(v < 0 for v in result[name]["per_seed"])  # navigation rewards are negative


def test_unknown_environment_family_is_a_clear_error():
    with pytest.raises(ValueError, match="comma-separated list from"):
        MetaGenRLConfig(envs="pendulum,cartpole")


def test_gradient_alignment_is_one_for_the_ddpg_objective():
    from mlcourse.algorithms.metagenrl import Agent, gradient_alignment

    agent = Agent("navigation", 0, hidden=(16,))
    for _ in range(200):
        agent.collect(random=True)
    assert gradient_alignment(MinusValue(), agent, batches=3) == pytest.approx(1.0, abs=1e-6)
    flipped = gradient_alignment(lambda f: -MinusValue()(f), agent, batches=3)
    assert flipped == pytest.approx(-1.0, abs=1e-6)


def test_export_and_the_shipped_objectives(tmp_path):
    from mlcourse import experiments, pretrained

    experiments.run_training(
        "metagenrl", tmp_path / "run", overrides=SMALL, device="cpu", progress=False
    )
    info = pretrained.export(tmp_path / "run", tmp_path / "objective.pt", note="test")
    saved = torch.load(tmp_path / "objective.pt", weights_only=True)
    run = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert info["steps"] == SMALL["steps"] and set(saved["weights"]) == {"objective"}
    for key, value in run["learner"]["objective"].items():
        assert torch.equal(saved["weights"]["objective"][key], value), key
    names = [n for n in pretrained.names() if n.startswith("metagenrl-")]
    assert names == ["metagenrl-nav-mc", "metagenrl-pen-mc"]
    actor, critic, batch, params = _setup(dtype=torch.float32)
    for name in names:
        shipped = pretrained.load(name)
        objective = shipped.network()
        assert shipped.steps > 0 and len(shipped.config.env_names) == 2
        assert not any(p.requires_grad for p in objective.parameters())
        params = {n: p.requires_grad_() for n, p in params.items()}
        loss = objective(objective_features(actor, params, critic, batch))
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        assert loss.isfinite() and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_metrics_leave_out_a_family_with_no_finished_episode():
    """A car episode lasts up to 999 steps: until one ends, its family has an episode count of
    0 and no return (never a nan in the log)."""
    import math

    config = MetaGenRLConfig(
        envs="navigation,mountaincar", agents_per_env=1, steps=150, warmup=50, log_every=50
    )
    population = MetaGenRLLearner(config)
    for step in range(150):
        population.step(step)
    figures = population.metrics()
    assert figures["episodes_navigation"] == 1 and figures["episodes_mountaincar"] == 0
    assert "return_mountaincar" not in figures
    assert math.isfinite(figures["return_navigation"]) and math.isfinite(figures["meta_loss"])
