"""The deploy tests."""
