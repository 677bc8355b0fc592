"""`python -m launch` is `python -m launch.cli`."""

import sys

from launch.cli import main

sys.exit(main())
