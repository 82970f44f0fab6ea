"""The meta-learning algorithms, as functions of parameters and tasks: losses, inner loops,
estimators and rollouts, with no run settings, training loop or files (those are
:mod:`mlcourse.experiments`).

- :mod:`~mlcourse.algorithms.maml` (lessons 01 and 02), :mod:`~mlcourse.algorithms.metasgd`
  (02), :mod:`~mlcourse.algorithms.reptile` (03) and :mod:`~mlcourse.algorithms.cavia`: adapting
  a network's parameters, or a context, to a task.
- :mod:`~mlcourse.algorithms.fewshot` (04): Prototypical and Matching Networks, MAML and ANIL on
  N-way K-shot episodes.
- :mod:`~mlcourse.algorithms.rl2` (06), :mod:`~mlcourse.algorithms.maml_rl` (07) and
  :mod:`~mlcourse.algorithms.metagenrl` (08): meta-reinforcement learning.
- :mod:`~mlcourse.algorithms.unified` (09): one outer loop for all of them.
"""
