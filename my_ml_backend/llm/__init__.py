"""LLM access: the OpenAI-compatible client and its replies, output modes, pacing, errors, the cache, batch costs.

May import `settings`, `storage` and `telemetry` only; knows nothing of labeling configs or Label Studio.
"""
