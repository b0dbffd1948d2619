"""``python -m nnfeat.cli``."""

import sys

from nnfeat.cli import main

sys.exit(main())
