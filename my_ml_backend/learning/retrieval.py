"""Choose the annotated examples to show the model for one task, and render them.

Selection, in this order of concern:
- relevance: cosine similarity of character bigrams (works for Chinese without word
  segmentation, and for code and English alike);
- diversity: a greedy pass that first takes the most similar example of each distinct
  answer (so a 9-to-1 label imbalance in the pool does not become 3-to-0 in the prompt),
  then fills up by similarity;
- a budget in characters (about one token per CJK character; a safe upper bound for
  English), so examples never crowd out the task itself.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence

from .examples import Example

_cache: dict[str, Counter[str]] = {}


def bigrams(text: str) -> Counter[str]:
    """Character bigram counts of `text` (lower-cased, whitespace collapsed)."""
    key = text
    found = _cache.get(key)
    if found is not None:
        return found
    norm = " ".join(text.lower().split())
    grams = Counter(norm[i : i + 2] for i in range(max(0, len(norm) - 1))) if len(norm) > 1 else Counter(norm)
    if len(_cache) > 4096:
        _cache.clear()
    _cache[key] = grams
    return grams


def similarity(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    small, large = (a, b) if len(a) < len(b) else (b, a)
    dot = sum(count * large.get(gram, 0) for gram, count in small.items())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


def _signature(example: Example) -> str:
    return json.dumps(example.answers, ensure_ascii=False, sort_keys=True)


def example_size(example: Example) -> int:
    """Characters the example adds to the prompt."""
    return sum(len(t) for t in example.texts.values()) + len(_signature(example)) + 20


def select_examples(pool: Sequence[Example], texts: dict[str, str], k: int, budget_chars: int) -> list[Example]:
    """Up to `k` examples for a task with these texts, within `budget_chars`."""
    if k <= 0 or not pool:
        return []
    query = bigrams("\n".join(texts.values()))
    same_text = "\n".join(texts.values())
    ranked = sorted(
        (e for e in pool if "\n".join(e.texts.values()) != same_text),  # never the task itself
        key=lambda e: (-similarity(query, bigrams("\n".join(e.texts.values()))), e.task_id),
    )
    chosen: list[Example] = []
    used = 0
    seen: set[str] = set()
    for diverse_pass in (True, False):
        for example in ranked:
            if len(chosen) >= k:
                break
            if example in chosen or (diverse_pass and _signature(example) in seen):
                continue
            size = example_size(example)
            if used + size > budget_chars:
                continue
            chosen.append(example)
            seen.add(_signature(example))
            used += size
    return chosen


def render_examples(examples: Sequence[Example]) -> str:
    """The examples block of the user prompt: each text followed by its correct answer."""
    blocks = []
    for n, example in enumerate(examples, start=1):
        texts = "\n".join(f"{name}: <<<{text}>>>" for name, text in example.texts.items())
        answer = json.dumps(example.answers, ensure_ascii=False)
        blocks.append(f"示例 {n} (example {n})\n{texts}\n答案 (answer): {answer}")
    return "\n\n".join(blocks)
