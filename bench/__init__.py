"""Benchmarks: each prints the figures the README and docs quote, with the command that made them."""
