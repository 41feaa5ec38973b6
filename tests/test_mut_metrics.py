"""Tests that kill mutmut survivors of reprolib.metrics (see tests/MUTATION.md)."""
