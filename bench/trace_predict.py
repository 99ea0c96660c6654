#!/usr/bin/env python3
"""Which package modules run while `/predict` answers one task: counted by a profiler, not claimed.

One task, few-shot on (`FEWSHOT_EXAMPLES=3`), response cache on and missed, against the local fake LLM,
through `NewModel.predict` as label-studio-ml calls it. Every function call made by a module of
`my_ml_backend` (any thread) is counted per module; modules are grouped as the call path (model,
predicting, labeling, learning), the LLM client's side (llm) and the plumbing under both (storage,
telemetry, settings).

Usage: .venv/bin/python bench/trace_predict.py [TREE]   (TREE: a checkout to trace, default this one)
It prints figures; it asserts nothing.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import TEST_KEY  # noqa: E402
from tests.fake_llm import server as fake  # noqa: E402

CONFIG = (ROOT / "examples" / "configs" / "text_classification.xml").read_text(encoding="utf-8")
GROUPS = {"model": "call path", "predicting": "call path", "predictor": "call path", "engine": "call path",
          "labeling": "call path", "learning": "call path", "llm": "LLM client side"}


def group_of(module: str) -> str:
    return GROUPS.get(module.split(".")[1] if "." in module else module, "plumbing")


def main() -> None:
    llm = fake.FakeLLMServer()
    llm.start()
    llm.set_default(fake.chat(json.dumps({"sentiment": "正面"}, ensure_ascii=False)))
    os.environ.update({"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm.base_url,
                       "DATA_DIR": tempfile.mkdtemp(), "FEWSHOT_EXAMPLES": "3", "LLM_CACHE": "on"})
    from my_ml_backend.model import NewModel

    try:  # trees where the process entry hands the model its settings
        from my_ml_backend.settings import load_settings

        NewModel.settings = load_settings()
    except (ImportError, TypeError):
        pass
    model = NewModel(label_config=CONFIG, project_id="1")
    model.predict([{"id": 1, "data": {"text": "warm-up, not traced"}}])
    seen: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and (name := frame.f_globals.get("__name__", "")).startswith("my_ml_backend"):
            seen[name] += 1

    sys.setprofile(profile)
    threading.setprofile(profile)
    model.predict([{"id": 2, "data": {"text": "这个产品很好，我很喜欢"}}])
    sys.setprofile(None)
    threading.setprofile(None)
    llm.stop()
    print(f"tree: {ROOT}")
    for group in ("call path", "LLM client side", "plumbing"):
        names = sorted(n for n in seen if group_of(n) == group)
        print(f"\n{group}: {len(names)} modules")
        for name in names:
            print(f"  {seen[name]:5d} calls  {name}")
    parsing = sum(c for n, c in seen.items() if n.endswith("labeling.parsing"))
    print(f"\nall: {len(seen)} modules; labeling.parsing function calls: {parsing}")


if __name__ == "__main__":
    main()
