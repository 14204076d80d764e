"""`python -m plainnet` (and `torchrun -m plainnet`) runs the command line."""

import sys

from plainnet.cli import main

sys.exit(main())
