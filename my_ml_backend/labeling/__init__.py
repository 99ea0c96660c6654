"""Labeling: the config schema, one handler per control (`controls/`), prompts, reply parsing, results, scores.

Pure functions over label_studio_sdk's `LabelInterface`; imports no other subpackage (no network, no store).
"""
