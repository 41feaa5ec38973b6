"""Tests that kill mutmut survivors of reprolib.attention (see tests/MUTATION.md)."""
