"""The spamgate benchmark: `make bench` (see docs/performance.md and bench/RESULTS.md)."""
