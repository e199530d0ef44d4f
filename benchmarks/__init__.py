"""Benchmarks: each row times atomicwrite and its baseline alternately in one run, as ratios."""
