"""Tests that kill mutmut survivors of reprolib.piebench (see tests/MUTATION.md)."""
