"""Copies of package functions for the checks' tests to build answers from.

A check that asks for an implementation refuses an answer that calls the package's own one
(``forbid=`` in :func:`mlcourse.course.checks._core.check`), and any copy of that function's code.
The tests' catalogues of right and wrong answers are built on correct implementations, as a
learner's would be: a copy made here runs the same code under a file name of its own (still
inside the package, so that what it calls counts as the package calling it), which the
check's guard does not take for the package's function.
"""

import types


def own(function):
    """A new function object with ``function``'s code, globals, defaults and closure."""
    code = function.__code__
    copy = types.FunctionType(
        code.replace(co_filename=code.co_filename + " (a test's own copy)"),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__doc__ = function.__doc__
    return copy
