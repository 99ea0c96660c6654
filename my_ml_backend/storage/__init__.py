"""Storage plumbing shared by the stores (response cache, quota ledger, example store).

SQLite (WAL, fork-safe) and Redis connections, the open-once-or-fall-back rule, the
warning a failing store costs, and Redis leases. Imports nothing from the rest of the package.
"""
