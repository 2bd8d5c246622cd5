"""Helpers shared by tests that run the service as a real process."""
