"""Storage plumbing shared by the response cache and the example store: SQLite (WAL, fork-safe) and Redis.

Imports nothing from the rest of the package.
"""
