"""Autograded exercise checks. In a notebook: ``from mlcourse import checks as check`` and then
``check.NAME(your_function)``. Each lesson's checks live in ``lessonNN.py``; each check has a
catalogue of known-wrong answers in ``tests/test_checks_lessonNN.py`` (lesson 00's in
``tests/test_checks_core.py``) proving that it rejects each one with a message naming the mistake
and a hint."""

from mlcourse.course.checks._core import REGISTRY, RESULTS, CheckResult, Fail, check, expect_tensor
from mlcourse.course.checks.lesson00 import *  # noqa: F403
from mlcourse.course.checks.lesson01 import *  # noqa: F403
from mlcourse.course.checks.lesson02 import *  # noqa: F403
from mlcourse.course.checks.lesson03 import *  # noqa: F403
from mlcourse.course.checks.lesson04 import *  # noqa: F403
from mlcourse.course.checks.lesson05 import *  # noqa: F403
from mlcourse.course.checks.lesson06 import *  # noqa: F403
from mlcourse.course.checks.lesson07 import *  # noqa: F403
from mlcourse.course.checks.lesson08 import *  # noqa: F403
from mlcourse.course.checks.lesson09 import *  # noqa: F403

__all__ = ["REGISTRY", "RESULTS", "CheckResult", "Fail", "check", "expect_tensor"]
