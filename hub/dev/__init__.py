"""Embedded services for development, the demo and the tests (SMTP sink, fakes)."""
