"""Ledger (SQLite) and pool of unlabeled post embeddings."""
