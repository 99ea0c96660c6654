"""`FEWSHOT_EXAMPLES=auto`: per project, show examples only in a form that measurably helps.

Examples do not always help: a small model can answer worse with them (docs/decisions.md,
"Few-shot only where it helps"). So the project's own annotations are the validation
set: a label-stratified sample of annotated tasks is predicted in every candidate form
(zero-shot included), each task leave-one-out (never shown as its own example), within
`FEWSHOT_EVAL_CALLS` calls. A form with examples is chosen only when, task by task, it
beats zero-shot clearly (wins minus losses >= MARGIN); otherwise zero-shot stays.
Without a budget (0), or with too few annotations to judge, the choice is zero-shot:
never worse than no examples.

The same predictions fit the project's score maps (`scorefit`): each judged task of the
chosen form gives its score and whether it was all right, and each predicted region its
score and whether the annotator has it, so the prediction score (and a region's) can say
how likely it is right on this project, at no extra call.

The same judged regions set each list control's region cut (`scorefit.fit_cut`): where the
regions under some score are mostly not the annotators', they are left out of the project's
predictions (a small model sure of an entity it invented, on sentences lacking its type).

The same predictions judge list extension (`labeling.extension`: a list the model closed
in doubt asked again and made to go on). A region it added counts as won (the annotator has
it) or lost; where it added more wrong regions than right ones, the project's predictions
stop extending (a small model may find a missing entity on one project and invent
one on another). No extra call: the judge sees the answer before and after.

The evaluation runs on the Train button and when the example count enters a new
version bucket. Its choice is kept in the example store (every worker and replica uses
it, a restart keeps it), logged, and exposed in `/metrics`. This module decides; the
engine supplies the predictions (this layer never calls the LLM itself).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, TypeVar

from ..labeling.calibration import ScoreMaps
from ..labeling.controls import LIST_TAGS
from ..telemetry.metrics import METRICS, Labels
from .examples import Example
from .index import ExampleIndex, label_of
from .retrieval import FewShotForm
from .scorefit import RegionCut, ScoreMap, fit, fit_cut
from .store import ExampleStore

logger = logging.getLogger(__name__)
Candidate = TypeVar("Candidate")  # what a judgement asks with: a few-shot form, an answer strategy

MIN_EXAMPLES = 8  # fewer annotated tasks: nothing to judge by, zero-shot
MIN_SAMPLES = 4  # fewer tasks per form than this: not worth the calls
RUNNING_FOR = 900.0  # seconds an evaluation started by another process blocks a new one
ABORT_AFTER_ERRORS = 3  # failed judgements (endpoint errors) from which, if they are most, the evaluation stops
RETRY_AFTER = 300.0  # seconds after an aborted evaluation before the next one may start
EVALUATIONS = "fewshot_evaluations"
EVAL_CALLS = "fewshot_eval_calls"


class EvaluationAborted(RuntimeError):
    """The endpoint failed the evaluation (outage, quota, key): nothing was learned about the forms, so no
    choice is stored, the previous one stays, and the next webhook may try again after `RETRY_AFTER`."""


def candidates(k: int) -> list[FewShotForm]:
    """Zero-shot first (it wins ties), then the forms with examples."""
    return [FewShotForm(0), FewShotForm(k, "block"), FewShotForm(k, "chat"), FewShotForm(1, "per-label")]


@dataclass
class FewShotEvaluation:
    """What an evaluation of the project's annotations found: the few-shot form and answer strategy to use, what
    each candidate scored, what it cost, and the score maps fitted on what will be served."""

    form: str = "0"
    bucket: int = 0
    samples: int = 0
    calls: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)
    reason: str = "not evaluated yet"
    at: float = 0.0
    score_map: dict | None = None  # `ScoreMap.to_dict()` fitted on the chosen form's judged tasks
    region_maps: dict[str, dict] | None = None  # control name -> `ScoreMap.to_dict()` of its regions' scores
    extend: bool | None = None  # list extension on the annotations: False lost, True won, None not seen
    region_cuts: dict[str, dict] | None = None  # list control name -> `RegionCut.to_dict()`
    # LLM_ANSWER_STRATEGY=auto (`strategy_choice`): "" not chosen (JSON), else the strategy and what it was chosen on
    strategy: str = ""
    strategy_accuracy: dict[str, float] = field(default_factory=dict)
    strategy_samples: int = 0
    strategy_reason: str = ""

    def fitted(self, version: str) -> ScoreMaps | None:
        """The score maps and region cuts fitted on predictions of `version` (same model, prompt, config,
        guidance), if any."""
        task = ScoreMap.from_dict(self.score_map)
        task = task if task is not None and task.version == version else None
        regions = {
            name: m for name, raw in (self.region_maps or {}).items()
            if (m := ScoreMap.from_dict(raw)) is not None and m.version == version
        }
        cuts = {
            name: c.below for name, raw in (self.region_cuts or {}).items()
            if (c := RegionCut.from_dict(raw)) is not None and c.version == version
        }
        return ScoreMaps(task, regions, cuts) if task is not None or regions or cuts else None

    def dumps(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def loads(cls, raw: str | None) -> FewShotEvaluation | None:
        if not raw:
            return None
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError):
            return None


class Judged(NamedTuple):
    """One judged task: all right, its prediction score (None: no answer), and per scored region
    (control name, region score, whether the annotator's answer has that region); `before`: the same
    judged before a doubtful list was made to go on (`labeling.extension`), None when none was."""

    ok: bool
    score: float | None = None
    regions: Sequence[tuple[str, float, bool]] = ()
    before: Judged | None = None
    error: bool = False  # no answer because the call failed: says nothing of the form


def extension_verdict(judged: Sequence[Judged]) -> tuple[bool | None, str]:
    """Keep list extension on this project? The regions it added that the annotators have, against those they do
    not: off when it added more wrong than right, None (the setting stands) when it added nothing.

    Counted per region, not per task: where a small model already invents, a task is wrong before and after,
    and only its regions show what the forced item was.
    """
    won = lost = 0
    for o in judged:
        if o.before is not None:
            won += sum(right for *_, right in o.regions) - sum(right for *_, right in o.before.regions)
            lost += sum(not right for *_, right in o.regions) - sum(not right for *_, right in o.before.regions)
    if not won and not lost:
        return None, "list extension added no judged region"
    return won >= lost, f"list extension added {won} regions the annotators have and {lost} they do not"


def margin(samples: int) -> int:
    """Net wins over zero-shot a form needs: at least 2 tasks, and 10 % of the sample."""
    return max(2, math.ceil(0.1 * samples))


def decide(forms: Sequence[FewShotForm], right: dict[str, list[bool]]) -> tuple[str, str]:
    """The chosen form's name and why, from per-task correctness (paired with zero-shot's)."""
    zero = right.get("0") or []
    n = len(zero)
    best, best_score, why = "0", sum(zero), "no form with examples beat zero-shot clearly"
    for form in forms:
        if form.k <= 0 or len(right.get(form.name) or []) != n:
            continue
        got = right[form.name]
        net = sum(g and not z for g, z in zip(got, zero, strict=True)) - sum(
            z and not g for g, z in zip(got, zero, strict=True)
        )
        if net >= margin(n) and sum(got) > best_score:
            best, best_score = form.name, sum(got)
            why = f"{form.name} beat zero-shot on {net} more of {n} tasks (needed {margin(n)})"
    return best, why


def stratified_sample(index: ExampleIndex, size: int, seed: int) -> list[Example]:
    """Up to `size` annotated examples, labels in turn (so a rare label is judged too)."""
    by_label: dict[str, list[Example]] = {}
    for example in index.shown():
        by_label.setdefault(label_of(example, index.schema), []).append(example)
    rng = random.Random(seed)
    groups = [rng.sample(g, len(g)) for _, g in sorted(by_label.items())]
    sample: list[Example] = []
    while len(sample) < size and any(groups):
        for group in groups:
            if group and len(sample) < size:
                sample.append(group.pop())
    return sample


def stratum_weights(index: ExampleIndex, labels: Sequence[str]) -> list[float]:
    """How many annotated tasks each judged one stands for: its label's share of the project over its share
    of the (label-stratified) sample, so the score map learns the project's accuracy, not the sample's."""
    project = Counter(label_of(example, index.schema) for example in index.shown())
    sample = Counter(labels)
    total, n = sum(project.values()) or 1, len(labels) or 1
    return [(project[label] / total) / (sample[label] / n) if project[label] else 1.0 for label in labels]


def judge_sample(
    index: ExampleIndex,
    sample: Sequence[Example],
    candidates: dict[str, Candidate],
    judge: Callable[[Example, Candidate], Judged],
    spent: Callable[[], int],
    budget: int,
) -> dict[str, list[tuple[Judged, str]]]:
    """Each candidate's judgement of each sampled task (with the task's label), task by task, while the calls
    `spent()` leave room in `budget` for one more task; raises `EvaluationAborted` when most judgements fail."""
    judged: dict[str, list[tuple[Judged, str]]] = {name: [] for name in candidates}
    errors = asked = 0
    for example in sample:
        if spent() + len(candidates) > budget:
            break
        for name, candidate in candidates.items():
            outcome = judge(example, candidate)
            errors, asked = errors + outcome.error, asked + 1
            if errors >= ABORT_AFTER_ERRORS and 2 * errors > asked:
                raise EvaluationAborted(f"{errors} of {asked} predictions failed: the endpoint, not the candidates")
            judged[name].append((outcome, label_of(example, index.schema)))
    return judged


def evaluate(
    index: ExampleIndex,
    forms: Sequence[FewShotForm],
    budget: int,
    judge: Callable[[Example, FewShotForm], Judged],
    spent: Callable[[], int],
    seed: int = 0,
    version: str = "",
    version_off: str = "",
) -> FewShotEvaluation:
    """Leave-one-out accuracy of each form on a sample, within `budget` calls, the decision and its score map.

    `judge(example, form)` predicts the example's task shown in `form` (never as its own
    example) and says whether the answer equals the annotator's, its prediction score
    (None: no answer) and each scored region's (control, score, the annotator has it);
    `spent()` is the number of LLM requests made so far; `version` the zero-shot
    model_version the score maps are valid for, `version_off` the same with list extension
    off (where the annotations turn it off, `extension_verdict`).
    """
    per_form = budget // len(forms)
    if budget <= 0 or len(index) < MIN_EXAMPLES or per_form < MIN_SAMPLES:
        reason = "FEWSHOT_EVAL_CALLS=0" if budget <= 0 else f"{len(index)} examples, budget {budget}: too few to judge"
        return FewShotEvaluation(reason=reason, at=time.time())
    sample = stratified_sample(index, per_form, seed)
    start = spent()
    judged = judge_sample(index, sample, {f.name: f for f in forms}, judge, lambda: spent() - start, budget)
    right = {name: [o.ok for o, _ in outcomes] for name, outcomes in judged.items()}
    n = len(right["0"])
    name, why = decide(forms, right)
    accuracy = {f: (sum(r) / n if n else 0.0) for f, r in right.items()}
    extend, said = extension_verdict([o for o, _ in judged[name]])
    if extend is False:  # the maps are fitted on what will be served: the answers before extension
        judged[name] = [(o.before or o, label) for o, label in judged[name]]
    maps = fitted_fields(judged[name], index, version_off if extend is False and version_off else version)
    return FewShotEvaluation(form=name, samples=n, calls=spent() - start, accuracy=accuracy,
                             reason=why if extend is None else f"{why}; {said}", at=time.time(), extend=extend, **maps)


def fitted_fields(judged: Sequence[tuple[Judged, str]], index: ExampleIndex, version: str) -> dict[str, Any]:
    """`fit_maps` as the `FewShotEvaluation` fields that store them (None where nothing was fitted)."""
    task, regions, cuts = fit_maps(judged, index, version)
    return {"score_map": task.to_dict() if task else None,
            "region_maps": {c: m.to_dict() for c, m in regions.items()} or None,
            "region_cuts": {c: cut.to_dict() for c, cut in cuts.items()} or None}


def fit_maps(
    judged: Sequence[tuple[Judged, str]], index: ExampleIndex, version: str
) -> tuple[ScoreMap | None, dict[str, ScoreMap], dict[str, RegionCut]]:
    """The task score's map, each control's region map and each list control's region cut, from one form's
    judged tasks.

    A region weighs as its task does (label-stratified sample, `stratum_weights`). A control's
    map is kept only where it beats its raw scores (`scorefit.fit`): an already calibrated
    single choice keeps its score; the regions of an entity list that invents names do not.
    """
    weights = stratum_weights(index, [label for _, label in judged])
    scored = [(o.score, o.ok, w) for (o, _), w in zip(judged, weights, strict=True) if o.score is not None]
    task = fit([(s, ok) for s, ok, _ in scored], version, [w for *_, w in scored])
    by_control: dict[str, list[tuple[float, bool, float, int]]] = {}
    for task_no, ((outcome, _), w) in enumerate(zip(judged, weights, strict=True)):
        for control, score, ok in outcome.regions:
            by_control.setdefault(control, []).append((score, ok, w, task_no))
    regions, cuts = {}, {}
    listed = {t.name for t in (index.schema.targets if index.schema else ()) if t.tag in LIST_TAGS}
    for control, found in sorted(by_control.items()):
        pairs, w, tasks = [(s, ok) for s, ok, *_ in found], [x[2] for x in found], [x[3] for x in found]
        if fitted := fit(pairs, version, w, groups=tasks):  # leave-one-task-out: a task's regions share its doubt
            regions[control] = fitted
        if control in listed and (cut := fit_cut(pairs, version, tasks)):
            cuts[control] = cut
    return task, regions, cuts


# -- per-project state: stored choice, running evaluations, metrics -----------------------

_choices: dict[str, FewShotEvaluation] = {}  # project -> last choice this process made or read
_running: set[tuple[str, str]] = set()
_lock = threading.Lock()


_finished: dict[tuple[str, str], float] = {}  # (project, config hash) -> when its last evaluation here finished


def finished_at(project: str, config_hash: str) -> float:
    """When this process last finished an evaluation of this project and config (0.0: never)."""
    with _lock:
        return _finished.get((project, config_hash), 0.0)


def meta_key(config_hash: str) -> str:
    return f"fewshot_choice:{config_hash}"


def stored_evaluation(store: ExampleStore, project: str, config_hash: str) -> FewShotEvaluation | None:
    """The choice kept for this project and config (one small read)."""
    try:
        choice = FewShotEvaluation.loads(store.get_meta(project, meta_key(config_hash)))
    except Exception as exc:  # noqa: BLE001 - no stored choice: zero-shot
        logger.warning("读取少样本选择失败 (cannot read the few-shot choice): %s", exc)
        return None
    if choice is not None:
        with _lock:
            _choices[project] = choice
    return choice




def start(
    store: ExampleStore,
    project: str,
    config_hash: str,
    bucket: int,
    run: Callable[[], FewShotEvaluation],
) -> bool:
    """Run `run` in a background thread unless this project's evaluation is already running anywhere.

    Its result is stored and noted in this process (`finished_at`), where the project's model reads it.
    """
    key = (project, config_hash)
    running_key = f"fewshot_eval_running:{config_hash}"
    with _lock:
        if key in _running:
            return False
        _running.add(key)
    try:
        started = float(store.get_meta(project, running_key) or 0)
        if time.time() - started < RUNNING_FOR:
            with _lock:
                _running.discard(key)
            return False
        store.set_meta(project, running_key, str(time.time()))
    except Exception:  # noqa: BLE001 - the store is down: no evaluation now
        with _lock:
            _running.discard(key)
        return False

    def work() -> None:
        marker = 0.0  # the running marker left behind: 0, or a start time that reads as running until RETRY_AFTER
        try:
            choice = run()
            choice.bucket = bucket
            store.set_meta(project, meta_key(config_hash), choice.dumps())
            with _lock:
                _choices[project] = choice
                _finished[key] = choice.at
            METRICS.inc(EVALUATIONS)
            METRICS.inc(EVAL_CALLS, choice.calls)
            logger.info(
                "自动评估 (project evaluation): project %s -> answer strategy %s (%s); few-shot %s (%s); accuracy on "
                "%d annotated tasks %s; %d calls; score map %s; region maps %s; region cuts %s; list extension %s",
                project, choice.strategy or "as set", choice.strategy_reason or "not chosen", choice.form,
                choice.reason, choice.samples,
                {f: round(a, 3) for f, a in choice.accuracy.items()}, choice.calls, choice.score_map or "none",
                choice.region_maps or "none", choice.region_cuts or "none",
                {None: "as set", True: "kept", False: "off"}[choice.extend],
            )
        except EvaluationAborted as exc:  # the previous choice stays; the next try waits RETRY_AFTER
            logger.warning("少样本自动评估中止，%.0f 秒后可重试 (few-shot evaluation aborted, retried after %.0f s), "
                           "project %s: %s", RETRY_AFTER, RETRY_AFTER, project, exc)
            marker = time.time() - RUNNING_FOR + RETRY_AFTER
        except Exception:  # noqa: BLE001 - a failed evaluation keeps the previous choice
            logger.exception("少样本自动评估失败 (few-shot auto evaluation failed), project %s", project)
        finally:
            with _lock:
                _running.discard(key)
            try:
                store.set_meta(project, running_key, str(marker))
            except Exception:  # noqa: BLE001
                pass

    threading.Thread(target=work, name=f"fewshot-eval-{project}", daemon=True).start()
    return True


def _chosen() -> list[tuple[Labels, float]]:
    with _lock:
        return [((("form", c.form), ("project", p)), float(FewShotForm.parse(c.form).k)) for p, c in _choices.items()]


def _accuracy() -> list[tuple[Labels, float]]:
    with _lock:
        return [((("form", f), ("project", p)), a) for p, c in _choices.items() for f, a in c.accuracy.items()]


def _samples() -> list[tuple[Labels, float]]:
    with _lock:
        return [((("project", p),), float(c.samples)) for p, c in _choices.items()]


METRICS.gauge("fewshot_examples", "Examples per task chosen by FEWSHOT_EXAMPLES=auto, by project and form.", _chosen)
METRICS.gauge(
    "fewshot_eval_accuracy", "Accuracy of each few-shot form on the project's own annotations (last evaluation).",
    _accuracy,
)
METRICS.gauge("fewshot_eval_samples", "Annotated tasks the last few-shot evaluation judged, by project.", _samples)
