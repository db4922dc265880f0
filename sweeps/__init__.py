"""Sweeps: job enumeration, job state and launchers."""
