"""Scenario families of the benchmark, one module each."""
