"""The benchmarks' output: result lines on stdout, flushed as they come (a long run shows progress)."""

from __future__ import annotations

import sys


def report(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()
