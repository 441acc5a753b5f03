"""Deterministic simulation of a ringkv cluster in one process (docs/simulation.md)."""
