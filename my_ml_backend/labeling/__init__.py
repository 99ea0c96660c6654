"""Labeling: config schema, one handler per control (`controls/`), prompts, parsing, results, scores, list extension.

Pure functions over label_studio_sdk's `LabelInterface`; imports no other subpackage (no network, no store).
"""
