"""Benchmarks comparing dicomweb-server with Orthanc; see :mod:`benchmarks.run`."""
