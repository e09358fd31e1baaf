"""avtool: data preparation, benchmarks and training for large video models on one machine (AVION)."""

__version__ = "0.1.0"
