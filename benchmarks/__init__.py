"""Benchmarks of omerofs against the OMERO test server: ``python -m benchmarks``.

See ``suite`` for what is measured and ``RESULTS.md`` for the latest run.
"""
