"""The data path: the in-pod OpenAI-compatible gateway that admits and orders requests by SLO."""
