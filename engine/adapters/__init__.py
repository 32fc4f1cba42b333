"""Thin adapters around the outside world: Hydra, DVC, subprocesses, the file system."""
