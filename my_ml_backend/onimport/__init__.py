"""Predict on import: Label Studio's TASKS_CREATED webhook queues the new tasks, a worker predicts and posts them.

Top of the stack beside `jobs`: reuses the batch job's pieces and the model `/predict` serves; `server` installs it.
"""
