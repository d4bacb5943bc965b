"""Typed contracts shared by components: the LLMDeployment resource and the gateway config."""
