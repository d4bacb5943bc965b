"""Learned models of what a model needs: output length, memory, step latency, capacity."""
