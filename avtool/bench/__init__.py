"""Benchmarks of the IO, CPU and GPU bottlenecks (paper Fig. 2-5, 7, Table 4)."""
