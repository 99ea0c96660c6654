"""Learning from annotators: examples, their store, webhook events, few-shot retrieval, score maps, region cuts.

May import `labeling`, `storage` and `settings`; never the LLM client or the server.
"""
