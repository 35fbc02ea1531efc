"""Helpers shared by the test suites (fixture locations, builders)."""
