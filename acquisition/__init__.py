"""Acquisition: uncertainty scores from prediction arrays and batch selection; numpy in, indices out."""
