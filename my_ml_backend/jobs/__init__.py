"""Command-line jobs: the batch prediction job (in-process or over an RQ queue), evaluation against annotations.

`cli` holds the command lines, which read the settings; the other modules are libraries they call.
Top of the stack beside `server`: may import the engine and every subpackage below it.
"""
