"""Acquisition: uncertainty scores from prediction arrays and batch selection (numpy only)."""
