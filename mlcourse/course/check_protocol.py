"""How a check's result travels from a lesson's kernel to ``mlcourse grade``.

A check displays its result under ``CHECK_MIME``; the grader reads that output of the check
cells it restored and nothing else. This module imports nothing, so the grader reads results
without loading PyTorch or the checks themselves.
"""

CHECK_MIME = "application/vnd.mlcourse.check+json"
