"""The Redis side of a queued batch run: task claims with a lease, the done set, and the run's figures.

RQ queues, runs and retries the chunks; what it cannot know is which *task* is done.
So each task is claimed before it is predicted (a key with a lease the worker renews
while it works) and added to the done set once its prediction is posted; every worker
adds its chunk's figures to the run's, which the command reads for its progress bar
and summary. Each step is one Lua script, so two workers never both claim a task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

PREFIX = "llm-preannotation:batch:"
KEEP = 30 * 86400  # seconds the done set, run summaries and failed chunks are kept
STATS = ("predicted", "posted", "failed", "skipped", "api_calls", "cache_hits", "prompt_tokens", "completion_tokens")
COUNTS = ("errors", "models", "refusals")  # per-run counts by error message, by answering model, by refusing model

# KEYS: done set, tried set. ARGV: claim key prefix, token, lease_ms, task ids...
# Returns one code per task: 0 done already, 1 claimed now, 2 claimed now but tried before, 3 busy.
_CLAIM = """
local codes = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], id) == 1 then codes[#codes + 1] = 0
  elseif redis.call('SET', ARGV[1] .. id, ARGV[2], 'NX', 'PX', ARGV[3]) then
    codes[#codes + 1] = 2 - redis.call('SADD', KEYS[2], id)
  else codes[#codes + 1] = 3 end
end
return codes
"""
# KEYS: done set. ARGV: claim key prefix, token, done (1/0), keep seconds, task ids... Lets go of claims.
_FINISH = """
for i = 5, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  if ARGV[3] == '1' then redis.call('SADD', KEYS[1], ARGV[i]) end
  if redis.call('GET', key) == ARGV[2] then redis.call('DEL', key) end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
# KEYS: claim keys. ARGV: token, lease_ms. Extends the claims still ours.
_RENEW = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
return 1
"""


class RunState:
    """The Redis side of one project's batch runs for one `model_version`."""

    def __init__(self, redis: Any, project: int, model_version: str) -> None:
        self.redis = redis
        self.base = f"{PREFIX}{project}:{model_version}"
        self.done_key, self.tried_key, self.jobs_key = f"{self.base}:done", f"{self.base}:tried", f"{self.base}:jobs"
        self.claim_prefix = f"{self.base}:claim:"

    def stats_key(self, run: str) -> str:
        return f"{self.base}:run:{run}:stats"

    def counts_key(self, run: str, name: str) -> str:
        return f"{self.base}:run:{run}:{name}"

    def claim(self, task_ids: Iterable[int], token: str, lease: float) -> dict[int, int]:
        ids = list(task_ids)
        codes = self.redis.eval(_CLAIM, 2, self.done_key, self.tried_key, self.claim_prefix, token,
                                int(lease * 1000), *ids)
        return dict(zip(ids, (int(c) for c in codes), strict=True))

    def finish(self, task_ids: Iterable[int], token: str, *, done: bool) -> None:
        ids = list(task_ids)
        if ids:
            self.redis.eval(_FINISH, 1, self.done_key, self.claim_prefix, token, "1" if done else "0", KEEP, *ids)

    def renew(self, task_ids: Iterable[int], token: str, lease: float) -> None:
        keys = [self.claim_prefix + str(i) for i in task_ids]
        if keys:
            self.redis.eval(_RENEW, len(keys), *keys, token, int(lease * 1000))

    def add(self, run: str, values: dict[str, float], counts: Mapping[str, Mapping[str, int]] | None = None) -> None:
        """Add one chunk's figures to the run's: `values` by STATS name, `counts` by COUNTS name, then key."""
        keys = [self.stats_key(run)] + [self.counts_key(run, name) for name in COUNTS]
        with self.redis.pipeline() as pipe:
            for name, value in values.items():
                if value:
                    pipe.hincrby(keys[0], name, int(value))
            for name, counted in (counts or {}).items():
                for key, count in counted.items():
                    if count:
                        pipe.hincrby(self.counts_key(run, name), key, int(count))
            for key in keys:
                pipe.expire(key, KEEP)
            pipe.execute()

    def read(self, run: str) -> tuple[dict[str, int], dict[str, Counter[str]]]:
        """(the run's STATS so far, its COUNTS so far) as every worker added them."""
        stats = {k.decode(): int(v) for k, v in self.redis.hgetall(self.stats_key(run)).items()}
        counts = {name: Counter({k.decode(): int(v) for k, v in self.redis.hgetall(self.counts_key(run, name)).items()})
                  for name in COUNTS}
        return stats, counts
