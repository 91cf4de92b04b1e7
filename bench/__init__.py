"""Benchmark suite of feedbackbot: the bare model, the Ray pipeline and a plain baseline.

Run it with `make bench` or `.venv/bin/python -m bench.run`; it writes docs/benchmarks.md.
"""
