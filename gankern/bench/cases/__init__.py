"""Benchmark cases, one module per op; each exposes cases(device, quick) -> list[Case]."""
