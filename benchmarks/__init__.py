"""pytest-benchmark suites (a package so its conftest never collides with tests/conftest.py)."""
