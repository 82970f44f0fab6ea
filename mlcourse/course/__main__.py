"""``python -m mlcourse.course timings [NOTEBOOK...] [--mode full|fast|both]``."""

import sys

from mlcourse.course.timings import main

if sys.argv[1:2] != ["timings"]:
    sys.exit("usage: python -m mlcourse.course timings [NOTEBOOK...] [--mode full|fast|both]")
sys.exit(main(sys.argv[2:]))
