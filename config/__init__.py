"""Carina settings, example configurations and the OpenAPI contract."""
