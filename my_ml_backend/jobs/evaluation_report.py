"""Score predictions against human annotations, control by control.

Users need to know how good the pre-labels are before trusting them, per control and
per label: a 90 % accuracy can hide a label the model never gets right. Metrics:
- Choices / Taxonomy: accuracy (exact answer), macro-F1 over labels, confusion table
  (single choice);
- Labels: span precision / recall / F1 on exact (start, end, label), micro and per label;
- other controls (TextArea, Rating, Number, DateTime): exact-match accuracy.
A task counts only for the controls its annotation fills in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..labeling.schema import LabelingSchema, Target
from ..learning.examples import answers_from_results

MISSING = "∅"  # no prediction for a control the annotator answered


@dataclass
class LabelCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class ControlReport:
    """Scores of one control over all evaluated tasks."""

    name: str
    tag: str
    tasks: int = 0
    exact: int = 0
    labels: dict[str, LabelCounts] = field(default_factory=dict)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def accuracy(self) -> float:
        return self.exact / self.tasks if self.tasks else 0.0

    @property
    def macro_f1(self) -> float:
        return sum(c.f1 for c in self.labels.values()) / len(self.labels) if self.labels else 0.0

    @property
    def micro(self) -> LabelCounts:
        total = LabelCounts()
        for c in self.labels.values():
            total.tp, total.fp, total.fn = total.tp + c.tp, total.fp + c.fp, total.fn + c.fn
        return total

    def count(self, label: str) -> LabelCounts:
        return self.labels.setdefault(label, LabelCounts())


def _as_set(answer: Any) -> set[str]:
    if answer is None:
        return set()
    return {str(a) for a in answer} if isinstance(answer, list) else {str(answer)}


def _spans(results: list[dict[str, Any]], name: str) -> set[tuple[int, int, str]]:
    return {
        (int(r["value"]["start"]), int(r["value"]["end"]), label)
        for r in results
        if r.get("from_name") == name and isinstance(r.get("value"), dict) and "start" in r["value"]
        for label in r["value"].get("labels") or []
    }


class Evaluation:
    """Accumulates (annotation, prediction) pairs and reports per control."""

    def __init__(self, schema: LabelingSchema) -> None:
        self.schema = schema
        self.controls = {t.name: ControlReport(t.name, t.tag) for t in schema.targets}
        self.tasks = 0

    def add(self, annotation: list[dict[str, Any]], prediction: list[dict[str, Any]]) -> None:
        """One task: the human's results and the model's results (empty when it made none)."""
        self.tasks += 1
        gold = answers_from_results(self.schema, annotation)
        guess = answers_from_results(self.schema, prediction or [])
        for target in self.schema.targets:
            if target.name not in gold:
                continue
            report = self.controls[target.name]
            report.tasks += 1
            if target.tag == "labels":
                self._add_spans(report, _spans(annotation, target.name), _spans(prediction or [], target.name))
            else:
                self._add_answer(report, target, gold[target.name], guess.get(target.name))

    @staticmethod
    def _add_spans(report: ControlReport, gold: set[tuple[int, int, str]], guess: set[tuple[int, int, str]]) -> None:
        report.exact += gold == guess
        for span in gold | guess:
            counts = report.count(span[2])
            if span in gold and span in guess:
                counts.tp += 1
            elif span in guess:
                counts.fp += 1
            else:
                counts.fn += 1

    @staticmethod
    def _add_answer(report: ControlReport, target: Target, gold: Any, guess: Any) -> None:
        report.exact += _as_set(gold) == _as_set(guess)
        if target.tag not in ("choices", "taxonomy"):
            return
        gold_set, guess_set = _as_set(gold), _as_set(guess)
        for label in target.control.labels or []:
            report.count(label)  # every label of the config appears, even one never used
        for label in gold_set | guess_set:
            counts = report.count(label)
            counts.tp += label in gold_set and label in guess_set
            counts.fp += label in guess_set and label not in gold_set
            counts.fn += label in gold_set and label not in guess_set
        if len(gold_set) == 1 and len(guess_set) <= 1:
            report.confusion[(next(iter(gold_set)), next(iter(guess_set), MISSING))] += 1

    def lines(self, title: str = "") -> list[str]:
        """A plain-text report (Chinese first, English in brackets), one block per control."""
        out = [title] if title else []
        out.append(f"评估任务数 (tasks evaluated): {self.tasks}")
        for report in self.controls.values():
            if not report.tasks:
                continue
            out.append(f"\n[{report.name}] {report.tag}: {report.tasks} 个任务 (tasks)")
            if report.tag == "labels":
                m = report.micro
                out.append(f"  span P/R/F1 (micro): {m.precision:.3f} / {m.recall:.3f} / {m.f1:.3f}")
            else:
                out.append(f"  准确率 (accuracy): {report.accuracy:.3f}")
            if report.labels:
                out.append(f"  macro-F1: {report.macro_f1:.3f}")
                out.append(f"  {'label':<16} {'P':>6} {'R':>6} {'F1':>6} {'TP':>5} {'FP':>5} {'FN':>5}")
                for label, c in report.labels.items():
                    out.append(
                        f"  {label:<16} {c.precision:>6.3f} {c.recall:>6.3f} {c.f1:>6.3f} {c.tp:>5} {c.fp:>5} {c.fn:>5}"
                    )
            if report.confusion:
                out += confusion_lines(report)
        return out


def confusion_lines(report: ControlReport) -> list[str]:
    """Rows: the annotator's label; columns: the model's label (∅ = no prediction)."""
    gold = sorted({g for g, _ in report.confusion})
    guess = sorted({p for _, p in report.confusion} | set(gold), key=lambda x: (x == MISSING, x))
    width = max(6, *(len(x) * 2 for x in guess))
    header = "  " + " " * 12 + "".join(f"{p:>{width}}" for p in guess)
    lines = ["  混淆表 (confusion: rows = human, columns = model)", header]
    for g in gold:
        lines.append(f"  {g:<12}" + "".join(f"{report.confusion[(g, p)]:>{width}}" for p in guess))
    return lines


def write_chart(evaluations: dict[str, Evaluation], path: Path) -> dict[str, str]:
    """A PNG bar chart of per-label F1 for every control, one bar group per run (e.g. 0 vs k examples).

    Without a CJK font (common on servers) Chinese labels would render as boxes: they
    are then shown as L1, L2, … and the returned legend maps them back.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    cjk = [f.name for f in font_manager.fontManager.ttflist if any(k in f.name for k in ("CJK", "Hei", "Song", "Kai"))]
    if cjk:
        plt.rcParams["font.sans-serif"] = [cjk[0], "DejaVu Sans"]
    runs = list(evaluations)
    first = evaluations[runs[0]]
    bars = [(r.name, label) for r in first.controls.values() if r.tasks for label in r.labels]
    if not bars:  # no per-label scores (e.g. only TextArea): show accuracy per control
        bars = [(r.name, "") for r in first.controls.values() if r.tasks]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars) * len(runs) + 2), 4.5))
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        controls = evaluations[run].controls
        values = [controls[c].labels[lb].f1 if lb else controls[c].accuracy for c, lb in bars]
        positions = [n + i * width for n in range(len(bars))]
        ax.bar(positions, values, width=width, label=run)
        for x, v in zip(positions, values, strict=True):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
    legend: dict[str, str] = {}
    ticks = []
    for c, lb in bars:
        shown = f"{c}\n{lb}" if lb else c
        if not cjk and not shown.isascii():
            legend[f"L{len(legend) + 1}"] = shown.replace("\n", " / ")
            shown = f"L{len(legend)}"
        ticks.append(shown)
    ax.set_xticks([n + width * (len(runs) - 1) / 2 for n in range(len(bars))])
    ax.set_xticklabels(ticks)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("F1" if bars[0][1] else "accuracy")
    title = "per-label F1 (model vs human)" if bars[0][1] else "accuracy per control (model vs human)"
    ax.set_title(title if cjk or title.isascii() else "model vs human")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return legend
