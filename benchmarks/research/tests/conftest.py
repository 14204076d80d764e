"""The research benchmarks' tests: run on purpose (``python3 -m pytest benchmarks/research``),
not by the default test command. Their modules import each other and ``benchmarks/``'s as
scripts do, so ``benchmarks/`` goes on the path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
