"""Hyperparameter sweeps over the MUSE and RWKU benchmarks: ``unilogit sweep`` and ``unilogit report SWEEP_DIR``.

``config`` reads and checks the sweep file, ``runner`` runs its points once per seed (resumable, in parallel) and
writes the table, ``pareto`` draws the Pareto fronts with their error bars and lists each method's front.
"""
