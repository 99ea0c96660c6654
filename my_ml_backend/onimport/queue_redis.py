"""The import queue in Redis (`REDIS_URL`): shared by the server and `rq worker` processes on any machine.

Per project: a set of every id ever queued (a re-sent webhook adds nothing), a sorted set
of pending ids, the open job's id and a lease; per job: a hash of its figures and one of
its failure reasons. Adding ids and closing a job are Lua scripts, so a webhook arriving
while the last chunk finishes either joins the open job or opens a new one, never a
closed one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..storage import redis_db
from .queue import KEEP_SECONDS, SHOWN_JOBS, ImportJob, now

PREFIX = "llm-preannotation:onimport:"

# KEYS: seen, pending, open, jobs, open projects. ARGV: prefix, project, stamp, keep seconds, ids...
_ADD = """
local job = redis.call('GET', KEYS[3])
local added = 0
for i = 5, #ARGV do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], tonumber(ARGV[i]), ARGV[i])
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if added == 0 then return 0 end
if not job then
  job = redis.call('INCR', ARGV[1] .. 'job-id')
  redis.call('SET', KEYS[3], job)
  redis.call('HSET', ARGV[1] .. 'job:' .. job, 'id', job, 'project', ARGV[2], 'started', ARGV[3], 'next_try', 0)
  redis.call('ZADD', KEYS[4], ARGV[3], job)
  redis.call('SADD', KEYS[5], ARGV[2])
end
redis.call('HINCRBY', ARGV[1] .. 'job:' .. job, 'total', added)
redis.call('HSET', ARGV[1] .. 'job:' .. job, 'updated', ARGV[3])
return added
"""
# KEYS: pending, open, open projects. ARGV: prefix, project, stamp. Closes the open job when nothing is pending.
_CLOSE = """
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
local job = redis.call('GET', KEYS[2])
if job then
  redis.call('HSET', ARGV[1] .. 'job:' .. job, 'finished', ARGV[3], 'updated', ARGV[3], 'waiting_until', '',
             'note', '')
  redis.call('DEL', KEYS[2])
end
redis.call('SREM', KEYS[3], ARGV[2])
return 1
"""
# KEYS: lease. ARGV: owner, ms. Takes or renews the lease unless another owner holds it.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_LET_GO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
NUMBERS = ("started", "updated", "busy", "next_try")
COUNTS = ("total", "posted", "skipped", "failed", "calls")


class RedisImportQueue:
    """`ImportQueue` over Redis."""

    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.redis = redis_db.connect(url)
        self.prefix = prefix
        self._add, self._close = self.redis.register_script(_ADD), self.redis.register_script(_CLOSE)
        self._hold, self._let_go = self.redis.register_script(_HOLD), self.redis.register_script(_LET_GO)

    def _key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    def _open_job(self, project: int) -> str | None:
        job = self.redis.get(self._key("open", project))
        return job.decode() if job else None

    def add(self, project: int, task_ids: Sequence[int]) -> int:
        if not task_ids:
            return 0
        keys = [self._key("seen", project), self._key("pending", project), self._key("open", project),
                self._key("jobs"), self._key("open-projects")]
        added = int(self._add(keys=keys, args=[self.prefix, project, now(), KEEP_SECONDS, *task_ids]))
        self._forget_old()
        return added

    def _forget_old(self) -> None:
        for job in self.redis.zrangebyscore(self._key("jobs"), "-inf", now() - KEEP_SECONDS):
            if self.redis.hget(self._key("job", job.decode()), "finished"):
                self.redis.delete(self._key("job", job.decode()), self._key("job", job.decode(), "errors"))
                self.redis.zrem(self._key("jobs"), job)

    def pending(self, project: int, limit: int) -> list[int]:
        return [int(i) for i in self.redis.zrange(self._key("pending", project), 0, limit - 1)]

    def settle(self, project: int, posted: Sequence[int] = (), skipped: Sequence[int] = (), failed: Sequence[int] = (),
               errors: Mapping[str, int] | None = None, calls: int = 0, busy: float = 0.0) -> None:
        pending = self._key("pending", project)
        counts = {name: int(self.redis.zrem(pending, *ids)) if ids else 0
                  for name, ids in (("posted", posted), ("skipped", skipped), ("failed", failed))}
        job = self._open_job(project)
        if job is None:
            return
        key = self._key("job", job)
        with self.redis.pipeline() as pipe:
            for name, value in (*counts.items(), ("calls", calls)):
                if value:
                    pipe.hincrby(key, name, value)
            if busy:
                pipe.hincrbyfloat(key, "busy", busy)
            pipe.hset(key, "updated", now())
            for message, count in (errors or {}).items():
                pipe.hincrby(self._key("job", job, "errors"), message, count)
            pipe.execute()

    def due(self, stamp: float) -> list[int]:
        found = []
        for raw in self.redis.smembers(self._key("open-projects")):
            project = int(raw)
            job = self._open_job(project)
            fields = self._fields(job) if job else {}
            if not fields or float(fields.get("next_try") or 0) > stamp:
                continue
            if self.redis.zcard(self._key("pending", project)) and not self.redis.exists(self._key("lease", project)):
                found.append((float(fields.get("started") or 0), project))
        return [project for _, project in sorted(found)]

    def hold(self, project: int, owner: str, seconds: float) -> bool:
        return bool(self._hold(keys=[self._key("lease", project)], args=[owner, int(seconds * 1000)]))

    def let_go(self, project: int, owner: str) -> None:
        self._let_go(keys=[self._key("lease", project)], args=[owner])

    def holders(self) -> dict[int, str]:
        found = {}
        for raw in self.redis.smembers(self._key("open-projects")):
            if (owner := self.redis.get(self._key("lease", int(raw)))) is not None:
                found[int(raw)] = owner.decode()
        return found

    def wait(self, project: int, next_try: float, note: str, until: float | None = None) -> None:
        job = self._open_job(project)
        if job is not None:
            self.redis.hset(self._key("job", job), mapping={
                "next_try": next_try, "note": note, "waiting_until": "" if until is None else until, "updated": now()})

    def close_if_done(self, project: int) -> bool:
        keys = [self._key("pending", project), self._key("open", project), self._key("open-projects")]
        return bool(self._close(keys=keys, args=[self.prefix, project, now()]))

    def _fields(self, job: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key("job", job)).items()}

    def jobs(self, limit: int = SHOWN_JOBS) -> list[ImportJob]:
        found = []
        for raw in self.redis.zrevrange(self._key("jobs"), 0, 4 * limit):
            fields = self._fields(raw.decode())
            if fields:
                found.append(self._job(raw.decode(), fields))
        found.sort(key=lambda j: (j.finished is not None, j.started if j.finished is None else -j.finished))
        return found[:limit]

    def _job(self, job: str, fields: dict[str, Any]) -> ImportJob:
        errors = {k.decode(): int(v) for k, v in self.redis.hgetall(self._key("job", job, "errors")).items()}
        return ImportJob(
            id=int(job), project=int(fields["project"]),
            **{name: float(fields.get(name) or 0) for name in NUMBERS},
            **{name: int(fields.get(name) or 0) for name in COUNTS},
            finished=float(fields["finished"]) if fields.get("finished") else None,
            waiting_until=float(fields["waiting_until"]) if fields.get("waiting_until") else None,
            note=fields.get("note", ""), errors=Counter(errors),
        )

    def remember(self, project: int, extra_params: str) -> None:
        self.redis.set(self._key("params", project), extra_params)

    def extra_params(self, project: int) -> str | None:
        raw = self.redis.get(self._key("params", project))
        return raw.decode() if raw is not None else None
