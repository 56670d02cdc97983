"""Side-by-side benchmarks: each figure is a ratio measured against its reference in one run."""
