"""Reinforcement-learning building blocks of the meta-RL lessons (05 onwards)."""
