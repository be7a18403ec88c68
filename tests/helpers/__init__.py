"""Shared helpers for the engine / resume / DDP / MoCo tests (tiny real datasets, tiny configs)."""
