"""The benchmark suite behind `gankern bench` and benchmarks/: cases per op, one runner."""
