"""The status page at `/`: what the backend is, what it is doing, what went wrong.

Server-rendered HTML (Chinese first, English after), no build step and no asset:
a few tables from `telemetry.activity`, the settings (secrets masked) and the example
store. A small inline script fetches the page again every 2 s and swaps the live
part, so a running batch's progress moves without a reload (and without JavaScript
the page is still complete). Basic auth applies as on every route.

`/` stays the stock health JSON for anything that does not ask for HTML (`curl`,
Label Studio), so only browsers see the page. Each section is one function taking the
page's `StatusData`; a new section (the model pool, the quota ledger) is one more
function in `SECTIONS`.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request

from ..labeling.prompts import PROMPT_VERSION
from ..learning.autotune import stored_choice
from ..learning.store import open_example_store
from ..llm.client import shared_client
from ..llm.quota import ACCOUNT, Quota
from ..settings import Settings, load_settings
from ..storage.redis_db import describe as describe_redis
from ..telemetry.activity import ACTIVITY, BatchProgress, Snapshot
from ..telemetry.logs import mask
from ..versioning import BACKEND_VERSION
from .registry import ModelRegistry

logger = logging.getLogger(__name__)
REFRESH_MS = 2000
STARTED = time.time()


@dataclass
class StatusData:
    """Everything one rendering of the page reads, gathered once."""

    settings: Settings
    snapshot: Snapshot
    projects: dict[str, dict[str, Any]]  # project -> {"examples": n, "model_version": …, "fewshot": …}
    now: float
    pool: tuple[str, ...] = ()  # the model pool in the order it is tried
    quotas: dict[str, Quota] = dataclasses.field(default_factory=dict)  # today's ledger, by model (and ACCOUNT)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def ago(when: float | None, now: float) -> str:
    return "—" if not when else f"{seconds(max(0.0, now - when))} 前 (ago)"


def table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    """An HTML table; cells are already escaped HTML."""
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def setting_value(settings: Settings, field: dataclasses.Field) -> str:
    """A setting as the page shows it: secrets (the `repr=False` fields) masked, long text summarised."""
    value = getattr(settings, field.name)
    if field.name == "redis_url":
        return describe_redis(value) if value else "（无 / none）"
    if not field.repr:
        return mask(value or "")
    if field.name == "instructions":
        return f"{len(value)} 字符 (chars)" if value else "（无 / none）"
    return "（无 / none）" if value is None or value == "" else str(value)


def config_section(data: StatusData) -> str:
    rows = [[esc(f.name), esc(setting_value(data.settings, f))] for f in dataclasses.fields(data.settings)]
    return "<h2>配置 (configuration)</h2>" + table(["设置 (setting)", "值 (value)"], rows, "")


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
        rows.append([esc(name), esc(", ".join(role)), esc(ago(info.last if info else None, data.now)), esc(quota)])
    if ACCOUNT in data.quotas:
        rows.append(["账号 (account)", "", "", esc(quota_text(data.quotas[ACCOUNT], None))])
    return rows


def models_section(data: StatusData) -> str:
    headers = ["模型 (model)", "角色 (role)", "最近回答 (last answer)", "剩余配额 (quota remaining)"]
    note = (
        '<p class="note">剩余配额取自额度账本（模型回答的 <code>modelscope-ratelimit-*</code> 响应头与拒绝），'
        "按额度日计算 (today's quota from the quota ledger: rate-limit headers and refusals; — when the endpoint "
        "reports none)</p>"
    )
    return "<h2>模型 (models)</h2>" + table(headers, model_rows(data), "") + note


def running_row(batch: BatchProgress, now: float) -> list[str]:
    share = batch.done / batch.total if batch.total else 1.0
    bar = f'<progress max="{batch.total}" value="{batch.done}"></progress> {share:.0%}'
    left = max(0.0, batch.deadline - now)
    return [
        esc(batch.project or "—"),
        f'<span class="done">{batch.done}</span> / <span class="total">{batch.total}</span>',
        bar,
        esc(f"{batch.succeeded} / {batch.failed}"),
        esc(seconds(now - batch.started)),
        esc(f"还剩 {seconds(left)} (left)"),
        esc(batch.source),
    ]


def running_section(data: StatusData) -> str:
    headers = [
        "项目 (project)", "完成 (done / total)", "进度 (progress)", "成功 / 失败 (ok / failed)",
        "已用时 (elapsed)", "时限 (deadline)", "进程 (process)",
    ]
    rows = [running_row(b, data.now) for b in data.snapshot.running]
    return (
        '<h2>进行中的批次 (batches in progress)</h2><div id="running">'
        + table(headers, rows, "当前没有进行中的批次 (no batch running)")
        + "</div>"
    )


def finished_section(data: StatusData) -> str:
    headers = [
        "结束 (ended)", "项目 (project)", "任务 (tasks)", "成功 (succeeded)", "失败 (failed)",
        "API 调用 (calls)", "缓存命中 (cache hits)", "tokens", "用时 (seconds)",
    ]
    rows = [
        [esc(ago(b.finished, data.now)), esc(b.project or "—"), esc(b.total), esc(b.succeeded), esc(b.failed),
         esc(b.calls), esc(b.cache_hits), esc(b.tokens), esc(f"{b.seconds:.2f}")]
        for b in data.snapshot.finished
    ]
    return "<h2>最近的批次 (last batches)</h2>" + table(headers, rows, "还没有完成的批次 (no batch yet)")


def errors_section(data: StatusData) -> str:
    headers = ["类型 (kind)", "任务数 (tasks)", "最近一次 (last)", "信息 (message)"]
    rows = [[esc(e.kind), esc(e.count), esc(ago(e.last, data.now)), esc(e.message)] for e in data.snapshot.errors]
    return "<h2>最近的错误 (recent errors)</h2>" + table(headers, rows, "没有错误 (no errors)")


def projects_section(data: StatusData) -> str:
    k = data.settings.fewshot_k
    if data.settings.fewshot_auto:
        choice = "auto：尚未评估，零样本 (not evaluated yet: zero-shot)"
    else:
        choice = f"FEWSHOT_EXAMPLES={k} ({data.settings.fewshot_form})" if k else "关闭 (off: FEWSHOT_EXAMPLES=0)"
    headers = ["项目 (project)", "已存示例 (stored examples)", "少样本 (few-shot)", "model_version"]
    rows = [
        [esc(p), esc(info.get("examples", 0)), esc(info.get("fewshot", choice)), esc(info.get("model_version", "—"))]
        for p, info in sorted(data.projects.items())
    ]
    return "<h2>项目 (projects)</h2>" + table(headers, rows, "还没有项目连接过 (no project seen yet)")


SECTIONS: list[Callable[[StatusData], str]] = [
    running_section, finished_section, errors_section, models_section, projects_section, config_section,
]
"""The page's live part, in order; each takes the gathered data and returns escaped HTML."""

STYLE = """
body{font-family:system-ui,"PingFang SC","Microsoft YaHei",sans-serif;margin:1.5rem;color:#222;max-width:80rem}
table{border-collapse:collapse;margin:.3rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f3f3f3}.empty,.note,.meta{color:#666}progress{width:10rem}code{background:#f3f3f3}
"""

SCRIPT = """
setInterval(async () => {
  try {
    const r = await fetch(location.pathname, {headers: {Accept: "text/html"}, cache: "no-store"});
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    document.getElementById("live").innerHTML = doc.getElementById("live").innerHTML;
  } catch (e) { /* the next tick tries again */ }
}, REFRESH_MS);
""".replace("REFRESH_MS", str(REFRESH_MS))


def render(data: StatusData) -> str:
    snap = data.snapshot
    scope = esc(snap.where)
    if not snap.shared:
        scope += " —— 多个 worker 或副本时每个进程只显示自己的批次，设置 REDIS_URL 可看到全部 " \
                 "(with several workers or replicas each shows only its own batches: set REDIS_URL for a shared view)"
    live = "".join(section(data) for section in SECTIONS)
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>LLM 预标注后端状态 (status)</title><style>{STYLE}</style></head>
<body>
<h1>LLM 预标注后端 (LLM pre-annotation backend)</h1>
<p class="meta">版本 (version) {esc(BACKEND_VERSION)} · 提示词版本 (prompt version) {esc(PROMPT_VERSION)} ·
进程 (pid) {os.getpid()} · 已运行 (up) {esc(seconds(data.now - STARTED))} ·
<a href="/metrics">/metrics</a> · <a href="/health">/health</a></p>
<p class="meta" id="scope">视图 (view): {scope}</p>
<div id="live"><p class="meta">更新于 (updated) {time.strftime("%H:%M:%S", time.localtime(data.now))}</p>
{live}</div>
<script>{SCRIPT}</script>
</body></html>"""


def gather(settings: Settings, registry: ModelRegistry) -> StatusData:
    """The snapshot, the pool's quota, the example counts and the few-shot choice of the projects seen."""
    ACTIVITY.configure(settings)
    projects: dict[str, dict[str, Any]] = {}
    configs: list[tuple[str, str]] = []
    for (project, config_hash), model in registry.items():
        if project:
            projects.setdefault(project, {})["model_version"] = model.model_version
            configs.append((project, config_hash))
    store = open_example_store(settings) if settings.fewshot_enabled else None
    if store is not None:
        try:
            for project, count in store.counts().items():
                projects.setdefault(project, {})["examples"] = count
        except Exception:  # noqa: BLE001 - the page shows what it can: the choices below still
            logger.warning("读取示例数失败 (cannot count the stored examples)", exc_info=True)
        try:
            for project, config_hash in configs:
                if (choice := stored_choice(store, project, config_hash)) is not None:
                    fitted = (choice.score_map or {}).get("n")
                    projects[project]["fewshot"] = fewshot_text(
                        choice.form, choice.accuracy.get(choice.form), fitted, sorted(choice.region_maps or {}),
                        choice.region_cuts,
                    )
        except Exception:  # noqa: BLE001 - the page shows what it can
            pass
    pool: tuple[str, ...] = ()
    quotas: dict[str, Quota] = {}
    try:
        client_pool = shared_client(settings).pool
        pool, quotas = client_pool.models, {q.scope: q for q in client_pool.status()}
    except Exception:  # noqa: BLE001 - a ledger that cannot be read leaves the header figures
        pass
    return StatusData(settings, ACTIVITY.snapshot(), projects, time.time(), pool, quotas)


def fewshot_text(
    form: str, accuracy: float | None, fitted: int | None = None, regions: Sequence[str] = (),
    cuts: dict[str, dict] | None = None,
) -> str:
    """`labels-1 (准确率 accuracy 80 %)`: the auto choice and what it measured on the project's annotations;
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


def install_status_page(app: Flask, registry: ModelRegistry) -> None:
    """Serve the page on `GET /` to browsers; everything else keeps the stock health JSON."""

    @app.before_request
    def status_page() -> Any:
        if request.path != "/" or request.method != "GET":
            return None
        best = request.accept_mimetypes.best_match(["application/json", "text/html"])
        if best != "text/html" or not request.accept_mimetypes.accept_html:
            return None  # curl, Label Studio and scripts get the stock JSON
        page = render(gather(load_settings(), registry))
        return Response(page, content_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})
