"""LLM pre-annotation backend for Label Studio (OpenAI-compatible chat APIs, ModelScope by default)."""
