"""The operator CLI (`hub`)."""
