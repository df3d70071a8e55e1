"""Helpers that start and reach real servers, shared by the tests and the benchmarks.

Not part of the product (not installed with it): tests and benchmarks run from the repository root, which
puts this package on the path. Nothing under engine/, services/, workers/ or cli/ imports it.

- `harness.processes`: the `bpbench` command line of this environment, free ports, the environment of a
  server process, waiting for a condition, whether a server answers.
- `harness.postgres`: a fresh PostgreSQL database of one's own, dropped afterwards.
- `harness.redis_databases`: a Redis database number of one's own on a shared server, locked and emptied.
- `harness.memory_peak`: a job run in a fresh interpreter, its own peak resident set read back (the grid of
  jobs whose peaks the memory estimates must bound).
"""
