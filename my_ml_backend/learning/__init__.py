"""Learning from annotators: examples from annotations, their store, webhook events, few-shot retrieval, score maps.

May import `labeling`, `storage` and `settings`; never the LLM client or the server.
"""
