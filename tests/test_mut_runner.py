"""Tests that kill mutmut survivors of reprolib.runner (see tests/MUTATION.md)."""
