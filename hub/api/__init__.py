"""The HTTP API (aiohttp): one module per resource, one middleware for errors and auth."""
