"""Telemetry: logging with secrets masked, and the Prometheus counters behind `/metrics`.

Imports only `settings`; every other layer may log and count through it.
"""
