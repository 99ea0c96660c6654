"""Command-line jobs: the batch prediction job, evaluation against annotations, and diagnostics helpers.

Top of the stack beside `server`: may import the engine and every subpackage below it.
"""
