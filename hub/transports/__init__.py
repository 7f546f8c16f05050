"""Transports: one module per channel/provider implementing `hub.transports.base`."""
