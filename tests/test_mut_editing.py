"""Tests that kill mutmut survivors of reprolib.editing (see tests/MUTATION.md)."""
