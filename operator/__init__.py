"""The control path: a kopf operator that turns LLMDeployments into placed, running workloads."""
