"""Learning from annotators: examples from annotations, their store, webhook events and few-shot retrieval.

May import `labeling`, `storage` and `settings`; never the LLM client or the server.
"""
