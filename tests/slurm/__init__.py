"""Helpers for the SLURM test: a throwaway single-node cluster (cluster.py) and the shared local smoke study."""
