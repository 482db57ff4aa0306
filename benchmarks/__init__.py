"""Benchmark and study scripts; importable as ``benchmarks.<name>`` from the repository root (the tests do)."""
