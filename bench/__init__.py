"""Benchmarks of eci-agent against the engine's own socket (`python -m bench`); not tests."""
