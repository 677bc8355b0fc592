"""`python -m ae_dist` is `python -m ae_dist.train`."""

import sys

from ae_dist.train import main

sys.exit(main())
