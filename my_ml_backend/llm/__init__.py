"""LLM access: the OpenAI-compatible client, output modes, pacing, the error table and the response cache.

May import `settings`, `storage` and `telemetry` only; knows nothing of labeling configs or Label Studio.
"""
