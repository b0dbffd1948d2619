"""``python -m nnfeat`` (and ``torchrun -m nnfeat``)."""

import sys

from nnfeat.cli import main

sys.exit(main())
