"""Hyperparameter sweeps over the MUSE and RWKU benchmarks: ``unilogit sweep`` and ``unilogit report SWEEP_DIR``.

``config`` reads and checks the sweep file, ``runner`` runs its points (resumable, in parallel) and writes
the table, ``report`` draws the Pareto fronts and picks the best point per method.
"""
