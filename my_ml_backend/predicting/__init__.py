"""From Label Studio tasks to predictions: prepare the calls, ask, read each reply once, calibrate, build items.

`factory.build_predictor` makes a `Predictor` per labeling config; `docs/architecture.md` traces one task.
"""
