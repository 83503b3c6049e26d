"""Measurements of the pipeline (``make bench``), each one ``python -m benchmarks.<name>`` writing
``benchmarks/results/<name>.json``; ``benchmarks.report`` holds the list and rebuilds ``RESULTS.md``.

Every other module here is a benchmark, except the shared helpers: ``common`` (paths, the machine, writing a
result, sampled photos, timing, the photo sets' split and features), ``workspace`` (throw-away project
copies) and ``baselines`` (the reference classifiers). A benchmark imports those, never another benchmark
(tests/test_benchmarks_layout.py checks it), so each one reads, runs and changes alone.
"""
