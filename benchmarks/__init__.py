"""Benchmarks comparing distributary with dask.distributed; run ``python -m benchmarks``."""
