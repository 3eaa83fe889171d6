"""xaibench: a benchmark of attribution methods for image classifiers."""

__version__ = "0.1.0"
