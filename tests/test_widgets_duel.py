"""The bandit duel of lesson 06: you and the agent play the same bandit with the same luck."""

import torch

from mlcourse.algorithms import rl2
from mlcourse.course.widgets import bandit_duel
from mlcourse.envs import BernoulliBanditVectorEnv

NUM_ARMS, NUM_PULLS = 3, 6


def duel(seed: int):
    torch.manual_seed(0)
    policy = rl2.RL2Policy(num_states=1, num_actions=NUM_ARMS, hidden_size=8)
    box = bandit_duel(policy, num_arms=NUM_ARMS, num_pulls=NUM_PULLS, seed=seed)
    return box, box.children[0].children


def test_playing_the_agents_pulls_pays_exactly_what_the_agent_was_paid():
    paid = []
    for seed in (100, 101, 102):
        box, buttons = duel(seed)
        agent = box.game["agent"]
        for arm in agent.actions[:, 0].tolist():
            buttons[arm].click()
        assert box.game["pulls"] == agent.actions[:, 0].tolist()
        assert box.game["rewards"] == agent.rewards[:, 0].tolist()
        paid += box.game["rewards"]
    assert 0.0 in paid and 1.0 in paid  # the check saw both outcomes


def test_each_arm_pays_from_its_own_draw_for_both_players():
    for seed in (100, 101):
        box, buttons = duel(seed)
        game = box.game
        probs, luck, agent = game["probs"], game["luck"], game["agent"]
        assert probs.shape == (NUM_ARMS,) and luck.shape == (NUM_PULLS, NUM_ARMS)
        mine = [(int(agent.actions[t, 0]) + 1 + t % 2) % NUM_ARMS for t in range(NUM_PULLS)]
        for arm in mine:  # never the agent's arm
            buttons[arm].click()
        for t in range(NUM_PULLS):
            arm = int(agent.actions[t, 0])
            assert agent.rewards[t, 0].item() == float(luck[t, arm] < probs[arm])
            assert game["rewards"][t] == float(luck[t, mine[t]] < probs[mine[t]])
        assert len({tuple(row) for row in luck.tolist()}) == NUM_PULLS  # a fresh draw per pull
        assert all(len(set(row)) == NUM_ARMS for row in luck.tolist())  # and per arm


def test_the_bandits_are_those_the_seeds_draw_and_new_bandit_moves_on():
    box, buttons = duel(7)
    env = BernoulliBanditVectorEnv(1, NUM_ARMS, NUM_PULLS)
    _, task = env.reset(seed=7)
    assert torch.equal(box.game["probs"], task["probs"][0])
    assert torch.equal(box.game["agent"].task["probs"][0], task["probs"][0])
    buttons[0].click()
    buttons[-1].click()  # new bandit: the next seed, a fresh table, no pulls yet
    _, task = env.reset(seed=8)
    assert box.game["seed"] == 8 and box.game["pulls"] == [] and box.game["rewards"] == []
    assert torch.equal(box.game["probs"], task["probs"][0])


def test_the_running_score_adds_up_finished_bandits_for_both_players():
    box, buttons = duel(100)
    score, label = box.game["score"], box.children[2]
    assert score == {"you": 0.0, "agent": 0.0, "bandits": 0} and "no bandit" in label.value
    you = agent = 0.0
    for played in (1, 2):
        game = box.game
        for t in range(NUM_PULLS):  # always arm 0: a strategy of one's own
            buttons[0].click()
            if t < NUM_PULLS - 1:  # the bandit counts only once its last pull is made
                assert score["bandits"] == played - 1
        you += sum(game["rewards"])
        agent += game["agent"].rewards[:, 0].sum().item()
        assert score == {"you": you, "agent": agent, "bandits": played}
        assert f"over {played} bandit" in label.value
        assert f"you {you:.0f}, the agent {agent:.0f}" in label.value
        buttons[0].click()  # past the trial's end: ignored, counted once
        assert score["bandits"] == played
        buttons[-1].click()  # new bandit
    assert box.game["seed"] == 102 and box.game["score"] is score
    buttons[1].click()
    buttons[-1].click()  # a bandit left before its last pull does not count
    assert score == {"you": you, "agent": agent, "bandits": 2}
    assert 0 < you + agent  # the check saw rewards


def test_without_a_kernel_the_fallback_image_shows_the_agents_whole_trial(monkeypatch):
    import base64

    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    box, _ = duel(100)
    (bundle,) = shown
    fallback = base64.b64decode(bundle["image/png"])
    assert fallback[:8] == b"\x89PNG\r\n\x1a\n" and fallback != box.children[1].value
    assert "application/vnd.jupyter.widget-view+json" in bundle  # the live widget, too
