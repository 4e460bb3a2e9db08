"""Jobs: nightly query, label fold-in and retraining, scheduling, simulation; plain functions."""
