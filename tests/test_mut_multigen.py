"""Tests that kill mutmut survivors of reprolib.multigen (see tests/MUTATION.md)."""
