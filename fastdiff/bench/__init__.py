"""End-to-end benchmark harness (filled by the benchmarks issue)."""
