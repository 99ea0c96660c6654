"""Label Studio glue: the HTTP views on the stock label-studio-ml app, the model registry and auth.

May import the engine layer (settings, `labeling.schema`, telemetry); nothing below imports `server`.
"""
