"""LLM pre-annotation backend for Label Studio (OpenAI-compatible chat APIs, ModelScope by default).

Layers, each importing only those after it:
`_wsgi`/`server`, `jobs` → `model` → `engine`/`predictor`/`versioning` → `learning` → `labeling`, `llm`
→ `storage`, `telemetry` → `settings`.
"""
