"""The lab: ablation grids (grid.py), running them (ablate.py) and their reports (report.py)."""
