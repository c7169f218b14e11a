"""Rate-separation curves (SCIENCE.md 5): score anatomy, error tolerance, tempering.

Entry point ``main(argv)`` (``madbench rate-separation``); see :mod:`.cli`. The circle closed
forms, the quadrature oracle and the Langevin runner need nothing else from the package.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the experiments and write results/rate_separation/{curves,slopes}.csv + figures."""
    from madbench.rate_separation.cli import main as _main

    return _main(argv)


__all__ = ["main"]
