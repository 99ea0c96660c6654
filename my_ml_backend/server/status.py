"""The status page at `/`: what the backend is, what it is doing, what went wrong.

Server-rendered HTML (Chinese first, English after) from the Jinja2 template
`templates/status.html`, autoescaped, with no build step and no asset: a few tables from
`telemetry.activity`, the settings (secrets masked) and the example store. A small inline
script fetches the page again every 2 s and swaps the live part, so a running batch's
progress moves without a reload (and without JavaScript the page is still complete).
Basic auth applies as on every route.

`/` stays the stock health JSON for anything that does not ask for HTML (`curl`,
Label Studio), so only browsers see the page. `gather` reads everything once per
rendering into `StatusData`; each table's rows are plain text made from it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from pydantic import SecretStr

from ..labeling.prompts import PROMPT_VERSION
from ..learning.autotune import stored_evaluation
from ..learning.store import open_example_store
from ..llm.client import shared_client
from ..llm.quota import ACCOUNT, Quota
from ..predicting.score_activity import SCORE_ACTIVITY, ScoreSnapshot
from ..settings import Settings
from ..storage.redis_db import describe as describe_redis
from ..telemetry.activity import ACTIVITY, BatchProgress, Snapshot
from ..telemetry.logs import mask
from ..versioning import BACKEND_VERSION
from .registry import ModelRegistry

logger = logging.getLogger(__name__)
ImportTable = tuple[str, list[list[object]]]  # a note ("" for none) and the rows of the import jobs (`onimport`)
REFRESH_MS = 2000
STARTED = time.time()
NONE = "（无 / none）"
PAGE = Environment(
    loader=PackageLoader(__package__), autoescape=select_autoescape(), undefined=StrictUndefined
).get_template("status.html")


@dataclass
class StatusData:
    """Everything one rendering of the page reads, gathered once."""

    settings: Settings
    snapshot: Snapshot
    projects: dict[str, dict[str, Any]]  # project -> {"examples": n, "model_version": …, "fewshot": …}
    now: float
    pool: tuple[str, ...] = ()  # the model pool in the order it is tried
    quotas: dict[str, Quota] = dataclasses.field(default_factory=dict)  # today's ledger, by model (and ACCOUNT)
    imports: ImportTable | None = None  # (note, rows) of the predict-on-import jobs, when installed
    score: ScoreSnapshot = dataclasses.field(default_factory=ScoreSnapshot)  # this process's score calls
    score_method: str = ""  # LLM_SCORE as the client's endpoint decides it now


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def ago(when: float | None, now: float) -> str:
    return "—" if not when else f"{seconds(max(0.0, now - when))} 前 (ago)"


def setting_value(settings: Settings, name: str) -> str:
    """A setting as the page shows it: secrets masked, the Redis URL without its password, long text summarised."""
    value = getattr(settings, name)
    if isinstance(value, SecretStr):
        return mask(value.get_secret_value())
    if name == "redis_url":
        return describe_redis(value) if value else NONE
    if name == "instructions":
        return f"{len(value)} 字符 (chars)" if value else NONE
    return NONE if value is None or value == "" else str(value)


def configuration_rows(data: StatusData) -> list[list[str]]:
    return [[f.name, setting_value(data.settings, f.name)] for f in dataclasses.fields(data.settings)]


def quota_text(quota: Quota | None, header: int | None) -> str:
    """Today's quota from the ledger (remaining / limit, and why the model is out); else the last header seen."""
    if quota is not None and quota.out == "retired":
        return "0 — 已下线 (retired)"
    if quota is not None and (quota.remaining is not None or quota.out):
        figure = str(quota.remaining or 0) + (f" / {quota.limit}" if quota.limit is not None else "")
        return figure + (" — 今日额度已用完 (used up today)" if quota.exhausted else "")
    return str(header) if header is not None else "—"


def model_rows(data: StatusData) -> list[list[str]]:
    """The pool's models in the order they are tried, then any other model that answered; the account last."""
    seen = {m.model: m for m in data.snapshot.models}
    pool = data.pool or (data.settings.model,)
    names = [*pool, *[m for m in seen if m not in pool]]
    last = data.snapshot.models[0].model if data.snapshot.models else None
    rows = []
    for name in names:
        info = seen.get(name)
        role = ["已配置 (configured)"] if name == data.settings.model else []
        role += ["备用 (fallback)"] if name in pool and name != data.settings.model else []
        role += ["最近回答 (answered last)"] if name == last else []
        quota = quota_text(data.quotas.get(name), info.quota_remaining if info else None)
        rows.append([name, ", ".join(role), ago(info.last if info else None, data.now), quota])
    if ACCOUNT in data.quotas:
        rows.append(["账号 (account)", "", "", quota_text(data.quotas[ACCOUNT], None)])
    return rows


def running_row(batch: BatchProgress, now: float) -> dict[str, object]:
    return {
        "project": batch.project or "—",
        "done": batch.done,
        "total": batch.total,
        "share": f"{batch.done / batch.total if batch.total else 1.0:.0%}",
        "ok_failed": f"{batch.succeeded} / {batch.failed}",
        "elapsed": seconds(now - batch.started),
        "left": f"还剩 {seconds(max(0.0, batch.deadline - now))} (left)",
        "source": batch.source,
    }


def finished_rows(data: StatusData) -> list[list[object]]:
    return [
        [ago(b.finished, data.now), b.project or "—", b.total, b.succeeded, b.failed, b.calls, b.cache_hits,
         b.tokens, f"{b.seconds:.2f}"]
        for b in data.snapshot.finished
    ]


def project_rows(data: StatusData) -> list[list[object]]:
    k = data.settings.fewshot_k
    if data.settings.fewshot_auto:
        choice = "auto：尚未评估，零样本 (not evaluated yet: zero-shot)"
    else:
        choice = f"FEWSHOT_EXAMPLES={k} ({data.settings.fewshot_form})" if k else "关闭 (off: FEWSHOT_EXAMPLES=0)"
    if data.settings.chooses_answer_strategy:
        strategy = "auto：尚未评估，JSON (not evaluated yet: structured)"
    else:
        strategy = f"LLM_ANSWER_STRATEGY={data.settings.answer_strategy}"
    withheld = data.score.withheld
    names = sorted({*data.projects, *(p for p in withheld if p != "-")})
    return [
        [p, (info := data.projects.get(p, {})).get("examples", 0), info.get("strategy", strategy),
         info.get("fewshot", choice), info.get("model_version", "—"), withheld.get(p, 0)]
        for p in names
    ]


def score_view(data: StatusData) -> dict[str, object]:
    """The score method in force, its budget and degradation, and its extra calls by method and model."""
    s = data.settings
    return {
        "method": data.score_method or s.score_method,
        "calls": s.score_calls,
        "minimum": s.min_score or "0 (off)",
        "degraded": data.score.degraded,
        "rows": [[method, model, n] for (method, model), n in sorted(data.score.calls.items())],
    }


def render(data: StatusData) -> str:
    snap = data.snapshot
    return PAGE.render(
        backend_version=BACKEND_VERSION,
        prompt_version=PROMPT_VERSION,
        pid=os.getpid(),
        up=seconds(data.now - STARTED),
        scope=snap.where,
        shared=snap.shared,
        updated=time.strftime("%H:%M:%S", time.localtime(data.now)),
        running=[running_row(b, data.now) for b in snap.running],
        finished=finished_rows(data),
        errors=[[e.kind, e.count, ago(e.last, data.now), e.message] for e in snap.errors],
        models=model_rows(data),
        projects=project_rows(data),
        score=score_view(data),
        configuration=configuration_rows(data),
        refresh_ms=REFRESH_MS,
        imports=data.imports,
    )


def gather(settings: Settings, registry: ModelRegistry) -> StatusData:
    """The snapshot, the pool's quota, the example counts and the few-shot choice of the projects seen."""
    ACTIVITY.configure(settings)
    projects: dict[str, dict[str, Any]] = {}
    configs: list[tuple[str, str]] = []
    for (project, config_hash), model in registry.items():
        if project:
            projects.setdefault(project, {})["model_version"] = model.model_version
            configs.append((project, config_hash))
    store = open_example_store(settings) if settings.keeps_annotations else None
    if store is not None:
        try:
            for project, count in store.counts().items():
                projects.setdefault(project, {})["examples"] = count
        except Exception:  # noqa: BLE001 - the page shows what it can: the choices below still
            logger.warning("读取示例数失败 (cannot count the stored examples)", exc_info=True)
        try:
            for project, config_hash in configs:
                if (choice := stored_evaluation(store, project, config_hash)) is not None:
                    fitted = (choice.score_map or {}).get("n")
                    projects[project]["fewshot"] = fewshot_text(
                        choice.form, choice.accuracy.get(choice.form), fitted, sorted(choice.region_maps or {}),
                        choice.region_cuts,
                    )
                    if choice.strategy and settings.answer_strategy == "auto":
                        projects[project]["strategy"] = strategy_text(
                            choice.strategy, choice.strategy_accuracy, choice.strategy_samples)
        except Exception:  # noqa: BLE001 - the page shows what it can
            pass
    pool: tuple[str, ...] = ()
    quotas: dict[str, Quota] = {}
    method = ""
    try:
        client = shared_client(settings)
        client_pool = client.pool
        method = settings.resolved_score_method(client.logprobs)
        if settings.weighs_shares(client.logprobs):  # `predicting.answer_shares`: no call, said on the page
            method += " + shares (按答案占比加权 weighed by answer shares)"
        pool, quotas = client_pool.models, {q.scope: q for q in client_pool.status()}
    except Exception:  # noqa: BLE001 - a ledger that cannot be read leaves the header figures
        pass
    return StatusData(settings, ACTIVITY.snapshot(), projects, time.time(), pool, quotas,
                      score=SCORE_ACTIVITY.snapshot(), score_method=method)


def strategy_text(strategy: str, accuracy: dict[str, float], samples: int) -> str:
    """The answer strategy the project's annotations chose, then each strategy's accuracy on them and how many
    annotated tasks were judged."""
    measured = ", ".join(f"{name} {value:.0%}" for name, value in accuracy.items())
    return f"{strategy}（准确率 accuracy: {measured}; {samples} 个标注任务 annotated tasks）" if measured else strategy


def fewshot_text(
    form: str, accuracy: float | None, fitted: int | None = None, regions: Sequence[str] = (),
    cuts: dict[str, dict] | None = None,
) -> str:
    """`per-label-1 (准确率 accuracy 80 %)`: the auto choice and what it measured on the project's annotations;
    `fitted`: the number of judged tasks the score map was fitted on, `regions`: the controls whose region
    scores have a map (`learning.scorefit`), `cuts`: the list controls whose low-scored regions are left out."""
    name = "0 (零样本 zero-shot)" if form == "0" else form
    text = f"{name}（准确率 accuracy {accuracy:.0%}）" if accuracy is not None else name
    if fitted:
        text += f"；分数按 {fitted} 条标注校准 (score fitted on {fitted} tasks)"
    if regions:
        text += f"；区域分数已校准 (region scores fitted: {', '.join(regions)})"
    if cuts:
        below = ", ".join(f"{name} < {cut.get('below')}" for name, cut in sorted(cuts.items()))
        text += f"；低分区域不预标注 (regions left out: {below})"
    return text


def install_status_page(
    app: Flask, registry: ModelRegistry, settings: Settings, imports: Callable[[float], ImportTable] | None = None
) -> None:
    """Serve the page on `GET /` to browsers (with the process's settings); everything else keeps the stock JSON."""

    @app.before_request
    def status_page() -> Any:
        if request.path != "/" or request.method != "GET":
            return None
        best = request.accept_mimetypes.best_match(["application/json", "text/html"])
        if best != "text/html" or not request.accept_mimetypes.accept_html:
            return None  # curl, Label Studio and scripts get the stock JSON
        data = gather(settings, registry)
        data.imports = imports(data.now) if imports is not None else None
        page = render(data)
        return Response(page, content_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})
