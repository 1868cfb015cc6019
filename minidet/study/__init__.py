"""The loss studies as a command: ``python -m minidet.study STUDY [--data X] [--budget B]``.

grids (the studies and the papers' directions), budgets (shared flags and seeds), run (one
training + evaluation), pool (the training processes), records (run keys and record files),
stats (paired t-intervals), report (tables and charts).
"""
