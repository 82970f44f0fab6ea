import sys

from mlcourse.cli import main

sys.exit(main())
