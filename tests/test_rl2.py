"""RL²: returns and advantages, the PPO objective, the recurrent policy's trial structure,
training with checkpoints and resume, and the command line."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from mlcourse import pretrained
from mlcourse.algorithms import rl2
from mlcourse.course.cli import main
from mlcourse.experiments.rl2 import RL2Learner
from mlcourse.rl.ppo import ppo_clip_loss
from mlcourse.rl.returns import discounted_returns, gae

# ---------------------------------------------------------------------------------------------
# Returns, GAE, PPO


def naive_gae(rewards, values, gamma, lam):
    T = rewards.shape[0]
    out = torch.zeros_like(rewards)
    for t in range(T):
        for k in range(t, T):
            next_v = values[k + 1] if k + 1 < T else torch.zeros_like(values[0])
            delta = rewards[k] + gamma * next_v - values[k]
            out[t] += (gamma * lam) ** (k - t) * delta
    return out


def test_gae_is_the_discounted_sum_of_td_errors():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    v = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    for gamma, lam in [(0.99, 0.3), (0.9, 0.95), (1.0, 0.5)]:
        assert torch.allclose(gae(r, v, gamma=gamma, lam=lam), naive_gae(r, v, gamma, lam))


def test_gae_limits():
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    returns = discounted_returns(r, 0.9)
    assert torch.allclose(gae(r, v, gamma=0.9, lam=1.0), returns - v)
    next_v = torch.cat([v[1:], torch.zeros(1, 3, dtype=torch.float64)])
    assert torch.allclose(gae(r, v, gamma=0.9, lam=0.0), r + 0.9 * next_v - v)


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        gae(torch.zeros(3, 2), torch.zeros(3), gamma=0.9, lam=0.9)


def test_ppo_clip_loss_has_no_gradient_beyond_the_clip_in_the_advantages_direction():
    old = torch.zeros(2)
    logp = torch.tensor([0.5, -0.5], requires_grad=True)  # ratios e^0.5 > 1.2 and e^-0.5 < 0.8
    loss = ppo_clip_loss(logp, old, torch.tensor([1.0, -1.0]), 0.2)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.equal(g, torch.zeros(2))
    loss = ppo_clip_loss(logp, old, torch.tensor([-1.0, 1.0]), 0.2)  # pessimistic side: kept
    (g,) = torch.autograd.grad(loss, logp)
    assert (g != 0).all()


def test_gae_and_returns_of_trials_of_one_step():
    """With T = 1 the return is the reward and the advantage is r − V."""
    r = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    v = torch.tensor([[0.3, 0.1, -1.0]], dtype=torch.float64)
    assert torch.equal(discounted_returns(r, 0.9), r)
    assert torch.equal(gae(r, v, gamma=0.9, lam=0.95), r - v)


def test_ppo_clip_loss_equals_the_clipped_objective_computed_by_hand():
    """ρ = exp(logp − old_logp) with old log-probabilities away from zero, advantages of
    several sizes and both signs, and ratios below, inside and above [1 − ε, 1 + ε]."""
    old = torch.tensor([-0.5, 0.2, 0.1, -0.1, 0.3], dtype=torch.float64)
    logp = old + torch.tensor([0.6, -0.5, 0.1, -0.4, 0.5], dtype=torch.float64)
    advantages = torch.tensor([2.0, -3.0, 0.5, 1.5, -0.25], dtype=torch.float64)
    terms = [
        1.2 * 2.0,  # ρ = e^0.6 above the range and A > 0: clipped
        0.8 * -3.0,  # ρ = e^-0.5 below the range and A < 0: clipped
        math.exp(0.1) * 0.5,  # inside the range: ρ A
        math.exp(-0.4) * 1.5,  # below the range but A > 0: the smaller, unclipped ρ A
        math.exp(0.5) * -0.25,  # above the range but A < 0: the smaller, unclipped ρ A
    ]
    loss = ppo_clip_loss(logp, old, advantages, 0.2)
    assert loss.item() == pytest.approx(-sum(terms) / len(terms), rel=1e-12, abs=0)


def test_ppo_clip_loss_sends_no_gradient_into_advantages_or_old_log_probs():
    """Advantages from a critic and old log-probabilities that still carry a graph are
    constants of the objective: only ``logp`` is differentiated."""
    critic = torch.tensor(1.5, requires_grad=True)
    behaviour = torch.tensor(0.1, requires_grad=True)
    logp = torch.tensor([0.3, -0.2, 0.05], requires_grad=True)
    advantages = critic * torch.tensor([1.0, -0.5, 2.0])
    old = behaviour * torch.ones(3)
    loss = ppo_clip_loss(logp, old, advantages, 0.2)
    g_logp, g_critic, g_behaviour = torch.autograd.grad(
        loss, [logp, critic, behaviour], allow_unused=True
    )
    assert g_critic is None and g_behaviour is None
    constants = ppo_clip_loss(logp, old.detach(), advantages.detach(), 0.2)
    assert torch.equal(g_logp, torch.autograd.grad(constants, logp)[0])


# ---------------------------------------------------------------------------------------------
# The recurrent policy and trials


def small_config(**overrides):
    base = dict(
        task="bandit",
        num_arms=3,
        num_pulls=6,
        trials_per_step=16,
        hidden_size=16,
        steps=6,
        epochs=2,
        minibatches=2,
        log_every=2,
        checkpoint_every=1e9,
    )
    return rl2.RL2Config(**{**base, **overrides})


@pytest.mark.parametrize(
    "expected_rewards, epochs, minibatches, privileged_critic",
    [(False, 1, 1, False), (True, 1, 1, False), (False, 2, 2, False), (False, 1, 1, True)],
)
def test_ppo_update_reports_the_losses_computed_by_hand_before_its_step(
    expected_rewards, epochs, minibatches, privileged_critic
):
    """PPO's losses from GAE with the config's γ and λ, advantages standardised over the batch,
    values and targets divided by the value head's scale, at the parameters before the step
    (with a zero step size they stay there, and the averages over equal minibatches are the
    whole batch's); ``epochs × minibatches`` optimizer steps; then the scale moves
    ``VALUE_SCALE_RATE`` of the way to the spread of the targets."""
    config = small_config(
        epochs=epochs, minibatches=minibatches, gamma=0.9, lam=0.7, clip=0.1, value_coef=0.3,
        expected_rewards=expected_rewards, privileged_critic=privileged_critic,
    )  # fmt: skip
    learner = RL2Learner(config)
    if epochs * minibatches > 1:
        for group in learner.optimizer.param_groups:
            group["lr"] = 0.0
    trials = rl2.run_trials(learner.policy, learner.envs, generator=learner.generator)
    policy = learner.policy
    with torch.no_grad():  # the policy being trained is no longer the one that collected
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        policy.value_scale.fill_(1.7)
    before = copy.deepcopy(policy)
    stats = rl2.ppo_update(policy, learner.optimizer, trials, config, entropy_coef=0.05)

    rewards = trials.expected_rewards if expected_rewards else trials.rewards
    advantages = gae(rewards, trials.values, gamma=0.9, lam=0.7)
    targets = advantages + trials.values
    standardised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    length = trials.actions.shape[0]
    with torch.no_grad():
        task = rl2.task_features(trials.task) if privileged_critic else None
        time = torch.arange(length) / length  # each step as a fraction of the trial
        logits, values, _, _ = before(trials.inputs, task=task, time=time)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(2, trials.actions[..., None]).squeeze(2)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    policy_loss = ppo_clip_loss(logp, trials.logp, standardised, 0.1)
    value_loss = torch.nn.functional.mse_loss(values / 1.7, targets / 1.7)
    expected = {
        "loss": policy_loss + 0.3 * value_loss - 0.05 * entropy,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": (trials.logp - logp).mean(),
    }
    assert (logp - trials.logp).abs().max() > 0.1  # ratios far from 1: the clip is at work
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value.item(), rel=1e-4, abs=1e-6), key
    steps = {int(state["step"]) for state in learner.optimizer.state.values()}
    assert steps == {epochs * minibatches}
    spread = targets.std().clamp(min=1e-3)
    rate = rl2.VALUE_SCALE_RATE
    assert policy.value_scale.item() == pytest.approx(((1 - rate) * 1.7 + rate * spread).item())


def test_rl2_inputs_layout():
    x = rl2.rl2_inputs(
        torch.tensor([2, 0]),
        torch.tensor([-1, 1]),
        torch.tensor([0.0, -0.5]),
        torch.tensor([False, True]),
        num_states=3,
        num_actions=2,
    )
    assert x.tolist() == [
        [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # trial start: no previous action or reward
        [1.0, 0.0, 0.0, 0.0, 1.0, -0.5, 1.0],
    ]


def test_step_by_step_equals_the_whole_sequence():
    """The rollout runs the GRU one step at a time; PPO replays whole trials at once."""
    torch.manual_seed(0)
    policy = rl2.RL2Policy(num_states=3, num_actions=2, hidden_size=8).double()
    x = torch.randn(5, 4, policy.input_size, dtype=torch.float64)
    logits, values, features, hidden = policy(x)
    h = policy.initial_state(4)
    for t in range(5):
        lt, vt, ft, h = policy(x[t : t + 1], h)
        assert torch.allclose(lt[0], logits[t]) and torch.allclose(vt[0], values[t])
    assert torch.allclose(h, hidden)


def test_replaying_trials_from_a_zero_state_reproduces_their_log_probs():
    config = small_config(task="mdp", num_states=4, num_actions=3, episode_length=3, num_episodes=2)
    learner = RL2Learner(config)
    trials = rl2.run_trials(learner.policy, learner.envs, generator=learner.generator)
    assert trials.actions.shape == (6, 16) and trials.inputs.shape == (6, 16, 4 + 3 + 2)
    logits, values, _, _ = learner.policy(trials.inputs)
    logp = torch.log_softmax(logits, -1).gather(2, trials.actions[..., None]).squeeze(2)
    assert torch.allclose(logp, trials.logp, atol=1e-5)
    assert torch.allclose(values, trials.values, atol=1e-5)
    # The done flag marks the step after each episode's end, and nothing at the trial start.
    assert trials.inputs[:, :, -1].sum(1).tolist() == [0, 0, 0, 16, 0, 0]


def test_the_hidden_state_starts_at_zero_in_every_trial():
    config = small_config()
    learner = RL2Learner(config)
    first = rl2.run_trials(learner.policy, learner.envs, generator=learner.generator)
    second = rl2.run_trials(learner.policy, learner.envs, generator=learner.generator)
    # The first step of every trial reads the same input and so has the same policy.
    # The first step of every trial reads the same input; had the hidden state been carried
    # over from the previous trial, the values there would differ between the two batches.
    assert torch.equal(first.inputs[0], second.inputs[0])
    assert torch.allclose(first.values[0], second.values[0])
    assert not torch.allclose(first.values[-1], second.values[-1])


@pytest.mark.parametrize("task", ["bandit", "mdp"])
def test_expected_rewards_are_the_means_of_the_sampled_ones(task):
    """Each step's expected reward is the mean of its reward given the task, state and action:
    the pulled arm's probability, or the MDP's reward mean in the state the action was taken."""
    sizes = dict(num_states=3, num_actions=2, episode_length=4, num_episodes=2)
    config = small_config(task=task, trials_per_step=20_000, **sizes)
    learner = RL2Learner(config)
    trials = rl2.run_trials(learner.policy, learner.envs, generator=learner.generator)
    rows = torch.arange(trials.actions.shape[1])
    if task == "bandit":
        want = trials.task["probs"][rows, trials.actions]
    else:
        states = trials.inputs[..., : config.num_states].argmax(-1)
        want = trials.task["reward_means"][rows, states, trials.actions]
    assert torch.equal(trials.expected_rewards, want)
    # Averaged over many trials, the sampled rewards and their means agree (noise only).
    gap = (trials.rewards - trials.expected_rewards).mean(1)
    noise = (trials.rewards - trials.expected_rewards).std(1) / trials.actions.shape[1] ** 0.5
    assert (gap.abs() < 5 * noise).all()
    assert not torch.equal(trials.rewards, trials.expected_rewards)


def test_the_privileged_critic_reads_the_task_and_time_but_the_agent_does_not():
    torch.manual_seed(0)
    policy = rl2.RL2Policy(num_states=1, num_actions=3, hidden_size=8, task_size=3).double()
    x = torch.randn(5, 4, policy.input_size, dtype=torch.float64)
    task = torch.rand(4, 3, dtype=torch.float64)
    time = torch.arange(5, dtype=torch.float64) / 5
    logits, values, _, hidden = policy(x, task=task, time=time)
    other_logits, other_values, _, _ = policy(x, task=torch.rand_like(task), time=time.flip(0))
    assert torch.equal(logits, other_logits)  # what the agent does ignores the privilege ...
    assert not torch.allclose(values, other_values)  # ... the value does not
    # Step by step (the rollout) equals the whole sequence (the PPO update).
    h = policy.initial_state(4)
    for t in range(5):
        lt, vt, _, h = policy(x[t : t + 1], h, task=task, time=time[t : t + 1])
        assert torch.allclose(lt[0], logits[t]) and torch.allclose(vt[0], values[t])
    assert torch.allclose(h, hidden)
    with pytest.raises(ValueError, match="critic reads the task"):
        policy(x)
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        policy(x, task=task[:, :2], time=time)


@pytest.mark.parametrize("task", ["bandit", "mdp"])
def test_replayed_trials_give_the_rollouts_values_with_a_privileged_critic(task):
    sizes = dict(num_states=4, num_actions=3, episode_length=3, num_episodes=2)
    config = small_config(task=task, privileged_critic=True, **sizes)
    assert config.task_size == (3 if task == "bandit" else 4 * 3 * 5)
    learner = RL2Learner(config)
    trials = rl2.run_trials(learner.policy, learner.envs, generator=learner.generator)
    length = trials.actions.shape[0]
    task_vector = rl2.task_features(trials.task)
    time = torch.arange(length) / length
    logits, values, _, _ = learner.policy(trials.inputs, task=task_vector, time=time)
    logp = torch.log_softmax(logits, -1).gather(2, trials.actions[..., None]).squeeze(2)
    assert torch.allclose(logp, trials.logp, atol=1e-5)
    assert torch.allclose(values, trials.values, atol=1e-5)


def test_with_expected_rewards_the_advantages_are_computed_from_them(monkeypatch):
    config = small_config(expected_rewards=True, privileged_critic=True)
    learner = RL2Learner(config)
    seen = []
    real_gae = rl2.gae
    monkeypatch.setattr(
        rl2, "gae", lambda rewards, *a, **k: seen.append(rewards) or real_gae(rewards, *a, **k)
    )
    before = params(learner)
    learner.step(0)
    trials = rl2.run_trials(learner.policy, learner.envs, generator=learner.generator)
    assert len(seen) == 1 and not torch.equal(params(learner), before)
    assert ((seen[0] > 0) & (seen[0] < 1)).float().mean() > 0.9  # probabilities, not 0 / 1
    assert torch.isfinite(torch.tensor(list(learner.last_stats.values()))).all()
    assert trials.expected_rewards.shape == trials.rewards.shape


# ---------------------------------------------------------------------------------------------
# Training


def params(learner):
    return torch.cat([p.detach().flatten() for p in learner.policy.parameters()])


def test_training_resumes_bit_for_bit(tmp_path):
    from mlcourse.experiments import run_training

    small = dataclasses.asdict(small_config())
    small.pop("task")
    run_training("rl2-bandit", tmp_path / "a", overrides=small, progress=False)
    run_training("rl2-bandit", tmp_path / "b", overrides={**small, "steps": 3}, progress=False)
    run_training(
        "rl2-bandit", tmp_path / "b", overrides={**small, "steps": 6}, resume=True, progress=False
    )
    from mlcourse.experiments import load_learner

    a, _ = load_learner("rl2-bandit", tmp_path / "a", "cpu")
    b, _ = load_learner("rl2-bandit", tmp_path / "b", "cpu")
    assert torch.equal(params(a), params(b))
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [2, 4, 6]
    assert all(0 <= line["trial_return"] <= 6 and "entropy" in line for line in log)


def test_bf16_autocast_keeps_float32_outputs_close_to_full_precision():
    torch.manual_seed(0)
    policy = rl2.RL2Policy(num_states=3, num_actions=4, hidden_size=32)
    x = torch.randn(20, 6, policy.input_size)
    full = policy(x)
    policy.bf16 = True
    half = policy(x)
    assert all(t.dtype == torch.float32 for t in half)
    for a, b in zip(full, half, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() < 0.05 and not torch.equal(a, b)  # bfloat16 did compute
    half[0].sum().backward()  # gradients reach the float32 weights
    assert policy.gru.weight_hh_l0.grad.dtype == torch.float32
    assert "bf16" not in str(list(policy.state_dict()))


def test_a_bf16_run_trains_in_bf16_and_evaluates_in_full_precision(monkeypatch):
    config = small_config(bf16=True)
    learner = RL2Learner(config)
    policy = learner.policy
    modes = []
    forward = policy.forward
    monkeypatch.setattr(
        policy, "forward", lambda *a, **k: modes.append(policy.bf16) or forward(*a, **k)
    )
    learner.step(0)
    assert modes and all(modes)  # rollout and update in bfloat16
    modes.clear()
    rl2.evaluate(policy, config, num_trials=64, seed=3)
    assert modes and not any(modes)
    assert policy.bf16  # restored after the evaluation


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_rl2_learns_to_beat_random_on_two_armed_bandits(bf16):
    config = small_config(
        bf16=bf16,
        num_arms=2,
        num_pulls=8,
        trials_per_step=128,
        hidden_size=32,
        steps=200,
        entropy_decay_steps=200,
        lr=3e-3,
    )
    learner = RL2Learner(config)
    before = rl2.evaluate(learner.policy, config, num_trials=2000, seed=5)
    for step in range(config.steps):
        learner.step(step)
    after = rl2.evaluate(learner.policy, config, num_trials=2000, seed=5)
    # Random play scores 4 (stderr about 0.03 here); Bayes-optimal play about 5.1.
    assert before["mean"] < 4.15
    assert after["mean"] > 4.3 and after["mean"] > before["mean"] + 0.3


def test_evaluation_refuses_a_different_number_of_arms():
    config = small_config()
    policy = rl2.RL2Policy(1, 3, 8)
    with pytest.raises(ValueError, match="trained with 3 actions"):
        rl2.evaluate(policy, dataclasses.replace(config, num_arms=5), num_trials=4)


def test_config_errors():
    with pytest.raises(ValueError, match="task"):
        rl2.RL2Config(task="gridworld")
    with pytest.raises(ValueError, match="num_pulls"):
        rl2.RL2Config(num_pulls=0)


# ---------------------------------------------------------------------------------------------
# Command line


def one_json(out):
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_train_and_eval_commands(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "rl2-bandit", "--out", out, "--no-progress", "--json"]
    argv += ["--num-arms", "3", "--num-pulls", "5", "--trials-per-step", "8"]
    argv += ["--hidden-size", "8", "--steps", "2", "--minibatches", "2"]
    assert main(argv) == 0
    assert one_json(capsys.readouterr().out)["step"] == 2
    argv = ["eval", "rl2-bandit", "--checkpoint", out, "--pulls", "7", "--episodes", "50"]
    assert main([*argv, "--json"]) == 0
    result = one_json(capsys.readouterr().out)
    assert result["num_pulls"] == 7 and result["trials"] == 50
    assert 0 <= result["mean"] <= 7 and result["stderr"] > 0
    assert main([*argv, "--arms", "4", "--json"]) == 1
    assert "trained with 3 actions" in capsys.readouterr().err


def test_rl2_mdp_eval_command(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "rl2-mdp", "--out", out, "--no-progress", "--num-episodes", "2"]
    argv += ["--trials-per-step", "4", "--hidden-size", "8", "--steps", "1", "--minibatches", "2"]
    assert main(argv) == 0
    capsys.readouterr()
    argv = ["eval", "rl2-mdp", "--checkpoint", out, "--episodes-per-trial", "3", "--trials", "20"]
    assert main([*argv, "--json"]) == 0
    result = one_json(capsys.readouterr().out)
    assert result["num_episodes"] == 3 and result["trials"] == 20 and "stderr" in result


def test_eval_command_plays_a_shipped_agent_by_name(capsys):
    argv = ["eval", "rl2-bandit", "--checkpoint", "rl2-bandit-k5-n10", "--pulls", "20"]
    assert main([*argv, "--episodes", "300", "--device", "cpu", "--json"]) == 0
    result = one_json(capsys.readouterr().out)
    shipped = pretrained.load("rl2-bandit-k5-n10")
    config = dataclasses.replace(shipped.config, num_pulls=20)
    expected = rl2.evaluate(shipped.network(), config, num_trials=300)
    assert result["mean"] == expected["mean"] and result["stderr"] == expected["stderr"]
    assert result["num_pulls"] == 20 and result["trained_steps"] == shipped.steps > 0
    # A shipped agent of another experiment, or a name the course does not ship, is refused.
    assert main(["eval", "rl2-mdp", "--checkpoint", "rl2-bandit-k5-n10"]) == 1
    assert "shipped 'rl2-bandit' agent" in capsys.readouterr().err
    assert main(["eval", "rl2-bandit", "--checkpoint", "rl2-bandit-k9"]) == 1
    err = capsys.readouterr().err
    assert "no such run folder" in err and "rl2-bandit-k5-n10" in err
    # It says how to make the run, and offers only this experiment's own agents.
    assert "mlcourse train rl2-bandit --out rl2-bandit-k9" in err and "rl2-mdp-n10" not in err


def test_rl2_mdp_defaults_are_the_table_recipe_and_flags_can_be_turned_off(tmp_path, capsys):
    small = ["--num-episodes", "2", "--trials-per-step", "4", "--hidden-size", "8", "--steps", "1"]
    small += ["--minibatches", "2", "--no-progress"]
    assert main(["train", "rl2-mdp", "--out", str(tmp_path / "a"), *small]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["entropy_coef"] == 0.05 and config["lr"] == 2e-3
    assert config["entropy_decay_steps"] == 3000 and config["anneal_lr"] is True
    assert main(["train", "rl2-mdp", "--out", str(tmp_path / "b"), *small, "--no-anneal-lr"]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["anneal_lr"] is False
    assert main(["train", "rl2-bandit", "--out", str(tmp_path / "c"), *small[2:]]) == 0
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["entropy_coef"] == 0.01 and config["anneal_lr"] is False
    capsys.readouterr()


def test_init_from_starts_a_longer_trial_run_from_a_shorter_ones_weights(tmp_path):
    from mlcourse.experiments import load_learner, run_training

    small = {"num_episodes": 2, "trials_per_step": 4, "hidden_size": 8, "minibatches": 2}
    run_training("rl2-mdp", tmp_path / "short", overrides={**small, "steps": 2}, progress=False)
    longer = {**small, "num_episodes": 5, "steps": 2}
    src = tmp_path / "short"
    run_training(
        "rl2-mdp", tmp_path / "ft", overrides=longer, progress=False, init_from=src, max_seconds=0
    )
    source, _ = load_learner("rl2-mdp", src, "cpu")
    start, state = load_learner("rl2-mdp", tmp_path / "ft", "cpu")
    assert state["step"] == 0 and torch.equal(params(start), params(source))
    assert start.config.num_episodes == 5
    assert torch.equal(start.policy.value_scale, source.policy.value_scale)
    assert start.optimizer.state_dict()["state"] == {}  # the optimizer starts afresh
    record = {"run": str(src), "step": 2}
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["init_from"] == record
    # Resuming keeps the record; training moves the weights away from the source's.
    run_training("rl2-mdp", tmp_path / "ft", overrides=longer, progress=False, resume=True)
    trained, state = load_learner("rl2-mdp", tmp_path / "ft", "cpu")
    assert state["step"] == 2 and state["init_from"] == record
    assert not torch.equal(params(trained), params(source))
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["init_from"] == record


def test_init_from_a_shipped_agent_starts_from_its_weights(tmp_path):
    from mlcourse.experiments import load_learner, run_training

    policy = pretrained.load("rl2-mdp-n10").network()
    longer = {"num_episodes": 25, "trials_per_step": 4, "minibatches": 2, "steps": 1}
    run_training(
        "rl2-mdp",
        tmp_path / "ft",
        overrides=longer,
        progress=False,
        init_from="rl2-mdp-n10",
        max_seconds=0,
    )
    start, state = load_learner("rl2-mdp", tmp_path / "ft", "cpu")
    assert state["step"] == 0 and start.config.num_episodes == 25
    shipped = torch.cat([p.detach().flatten() for p in policy.parameters()])
    assert torch.equal(params(start), shipped)
    record = json.loads((tmp_path / "ft" / "config.json").read_text())["init_from"]
    assert record["shipped"] == "rl2-mdp-n10" and record["step"] > 0
    with pytest.raises(ValueError, match="shipped 'rl2-mdp' agent"):
        run_training("rl2-bandit", tmp_path / "b", init_from="rl2-mdp-n10")
    with pytest.raises(FileNotFoundError, match="ships no agent of that name"):
        run_training("rl2-mdp", tmp_path / "c", init_from="rl2-mdp-n99")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_init_from_a_shipped_agent_into_a_privileged_critic_run(tmp_path):
    """The agent (GRU, policy head) and the value scale come from the shipped policy; the
    critic, which the shipped policy lacks, starts afresh, and exports and loads back."""
    from mlcourse.experiments import load_learner, run_training

    policy = pretrained.load("rl2-mdp-n10").network()
    options = {"num_episodes": 25, "trials_per_step": 4, "minibatches": 2, "steps": 1}
    options.update(privileged_critic=True, expected_rewards=True)
    run_training(
        "rl2-mdp", tmp_path / "ft", overrides=options, progress=False, init_from="rl2-mdp-n10"
    )
    start, _ = load_learner("rl2-mdp", tmp_path / "ft", "cpu")
    assert start.policy.task_size == 10 * 5 * 11 and not hasattr(start.policy, "value_head")
    run_training(
        "rl2-mdp",
        tmp_path / "zero",
        overrides=options,
        progress=False,
        init_from="rl2-mdp-n10",
        max_seconds=0,
    )
    fresh, _ = load_learner("rl2-mdp", tmp_path / "zero", "cpu")
    for name in ("gru.weight_hh_l0", "policy_head.weight", "value_scale"):
        assert torch.equal(fresh.policy.state_dict()[name], policy.state_dict()[name]), name
    pretrained.export(tmp_path / "ft", tmp_path / "agent.pt", note="test")
    saved = torch.load(tmp_path / "agent.pt", weights_only=True)
    config = rl2.RL2Config(**saved["config"])
    loaded = RL2Learner.network(config, saved["weights"])
    score = rl2.evaluate(loaded, config, num_trials=8)
    assert score == rl2.evaluate(start.policy, start.config, num_trials=8)


def test_init_from_refuses_what_cannot_fit(tmp_path):
    from mlcourse.experiments import run_training

    small = {"num_episodes": 2, "trials_per_step": 4, "hidden_size": 8, "minibatches": 2}
    run_training("rl2-mdp", tmp_path / "src", overrides={**small, "steps": 1}, progress=False)
    src = tmp_path / "src"
    with pytest.raises(ValueError, match="same hidden size"):
        run_training(
            "rl2-mdp", tmp_path / "a", overrides={**small, "hidden_size": 16}, init_from=src
        )
    with pytest.raises(ValueError, match="can only start from a 'rl2-bandit' run"):
        run_training("rl2-bandit", tmp_path / "b", overrides={"hidden_size": 8}, init_from=src)
    with pytest.raises(ValueError, match="cannot be combined with --resume"):
        run_training("rl2-mdp", src, overrides=small, resume=True, init_from=src)
    with pytest.raises(ValueError, match="can only start from a 'maml-sine' run"):
        run_training("maml-sine", tmp_path / "c", init_from=src)
    with pytest.raises(FileNotFoundError):
        run_training("rl2-mdp", tmp_path / "d", overrides=small, init_from=tmp_path / "none")
    assert not any((tmp_path / name).exists() for name in "abcd")  # nothing half-written


def test_baselines_commands(capsys):
    argv = ["baselines", "bandit", "--arms", "3", "--pulls", "4", "--episodes", "200", "--json"]
    assert main(argv) == 0
    result = one_json(capsys.readouterr().out)
    expected = {"random", "greedy", "epsilon_greedy", "ucb1", "thompson", "optimistic_thompson"}
    assert set(result) == expected | {"gittins"}
    assert all({"mean", "stderr"} <= set(r) for r in result.values())
    argv = ["baselines", "mdp", "--episodes-per-trial", "2", "--trials", "20", "--json"]
    assert main(argv) == 0
    result = one_json(capsys.readouterr().out)
    assert set(result) == {"random", "greedy", "epsilon_greedy", "psrl", "beb"}


def test_bandit_duel_widget_plays_a_trial_against_the_agent():
    from mlcourse.course.widgets import bandit_duel

    policy = rl2.RL2Policy(num_states=1, num_actions=3, hidden_size=8)
    box = bandit_duel(policy, num_arms=3, num_pulls=4, seed=5)
    buttons, image = box.children[0].children, box.children[1]
    first = image.value
    for arm in (0, 2, 2, 1, 1):  # the fifth pull is past the trial's end: ignored
        buttons[arm].click()
    game = box.game
    assert game["pulls"] == [0, 2, 2, 1] and len(game["rewards"]) == 4
    assert set(game["rewards"]) <= {0.0, 1.0} and image.value != first
    assert game["agent"].actions.shape == (4, 1)
    buttons[-1].click()  # new bandit
    assert box.game["seed"] == 6 and box.game["pulls"] == []


def test_export_writes_the_policy_of_a_run(tmp_path):
    from mlcourse.experiments import load_learner, run_training

    small = dataclasses.asdict(small_config(steps=2))
    small.pop("task")
    run_training("rl2-bandit", tmp_path / "run", overrides=small, progress=False)
    info = pretrained.export(tmp_path / "run", tmp_path / "agent.pt", note="test")
    saved = torch.load(tmp_path / "agent.pt", weights_only=True)
    assert info["steps"] == 2 and saved["config"]["num_arms"] == 3
    assert set(saved["weights"]) == {"policy"}  # no optimizer, environments or generators
    run, _ = load_learner("rl2-bandit", tmp_path / "run", "cpu")
    for key, value in run.policy.state_dict().items():
        assert torch.equal(saved["weights"]["policy"][key], value), key


def test_a_policy_saved_before_value_normalisation_loads_with_scale_one():
    saved = rl2.RL2Policy(5, 5, hidden_size=8)
    with torch.no_grad():
        saved.value_scale.fill_(7.0)
    state = saved.state_dict()
    del state["value_scale"]  # what runs saved before the buffer existed hold
    policy = rl2.RL2Policy(5, 5, hidden_size=8)
    policy.load_state_dict(state)
    assert policy.value_scale.item() == 1.0
    assert torch.equal(policy.value_head.weight, saved.value_head.weight)
    with pytest.raises(RuntimeError, match="gru"):  # any other missing key is still an error
        del state["gru.weight_ih_l0"]
        policy.load_state_dict(state)
