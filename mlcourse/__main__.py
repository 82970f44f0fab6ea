import sys

from mlcourse.course.cli import main

sys.exit(main())
