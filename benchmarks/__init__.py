"""Benchmarks: run as scripts (`.venv/bin/python benchmarks/<name>.py`); importable as a package for the tests."""
