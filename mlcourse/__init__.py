"""mlcourse: the package behind the meta-learning and meta-RL course.

Lessons import it; checks, grading and the ``mlcourse`` command line are built on it.
"""

__version__ = "0.1.0"
