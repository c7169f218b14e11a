"""Rate-separation curves (docs/science.md 5): score anatomy, error tolerance, tempering.

``madbench rate-separation`` (:mod:`.cli`) runs them and writes :mod:`.outputs`. The circle
closed forms, the quadrature oracle and the Langevin runner need nothing else from the package;
learned scores come from run directories through :func:`madbench.runs.load_run`.
"""
