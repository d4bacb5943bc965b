"""Shared fixtures. Component-specific fixtures live in each tier's own conftest."""
