"""Examples in Redis (`REDIS_URL`): one hash per project, one field per annotation, shared by replicas.

Beside each project's hash: its version counter (`:version`), the version of each annotation's
last change (`:changes`, a sorted set) and its small values (`:meta`, a hash).
"""

from __future__ import annotations

from collections.abc import Iterable

from ...storage import redis_db
from .base import Changes, ParsedSnapshots, StoredAnnotation

REDIS_PREFIX = "llm-preannotation:examples:"

# KEYS: examples hash, version counter, changes sorted set (member: annotation id, score: version).
# ARGV: "set" followed by id/payload pairs, or "del" followed by ids. Atomic: a reader never sees
# a version whose change is not noted yet. Returns how many fields were removed (for "del").
_REDIS_WRITE = """
local removed = 0
if ARGV[1] == "set" then
  for i = 2, #ARGV, 2 do
    redis.call("HSET", KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call("ZADD", KEYS[3], redis.call("INCR", KEYS[2]), ARGV[i])
  end
else
  for i = 2, #ARGV do
    if redis.call("HDEL", KEYS[1], ARGV[i]) == 1 then
      removed = removed + 1
      redis.call("ZADD", KEYS[3], redis.call("INCR", KEYS[2]), ARGV[i])
    end
  end
end
return removed
"""


class RedisExampleStore(ParsedSnapshots):
    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
        self.prefix = prefix
        self.description = redis_db.describe(url)
        self._redis = redis_db.connect(url)
        self._write = self._redis.register_script(_REDIS_WRITE)

    def _keys(self, project: str) -> list[str]:
        base = self.prefix + project
        return [base, base + ":version", base + ":changes"]

    def upsert(self, project: str, item: StoredAnnotation) -> None:
        self.upsert_many(project, [item])

    def upsert_many(self, project: str, items: Iterable[StoredAnnotation]) -> None:
        args: list[str] = []
        for item in items:
            args += [str(item.annotation_id), item.dumps()]
        for start in range(0, len(args), 2000):  # bounded script calls: Redis blocks while one runs
            self._write(keys=self._keys(project), args=["set", *args[start : start + 2000]])

    def delete(self, project: str, annotation_ids: list[int]) -> int:
        if not annotation_ids:
            return 0
        return int(self._write(keys=self._keys(project), args=["del", *[str(a) for a in annotation_ids]]))

    def raw_snapshot(self, project: str) -> tuple[int, list[tuple[int, str | bytes]]]:
        rows, version = self._redis.pipeline(transaction=True).hgetall(self._keys(project)[0]).get(
            self._keys(project)[1]
        ).execute()
        return int(version or 0), sorted((int(k), v) for k, v in rows.items())

    def version(self, project: str) -> int:
        return int(self._redis.get(self._keys(project)[1]) or 0)

    def count(self, project: str) -> int:
        return int(self._redis.hlen(self._keys(project)[0]))

    def changes(self, project: str, since: int) -> Changes:
        examples, version_key, changes_key = self._keys(project)
        version, ids = self._redis.pipeline(transaction=True).get(version_key).zrangebyscore(
            changes_key, f"({since}", "+inf"
        ).execute()
        ids = [int(a) for a in ids]
        payloads = self._redis.hmget(examples, [str(a) for a in ids]) if ids else []
        stored = [StoredAnnotation.loads(a, p) for a, p in zip(ids, payloads, strict=True) if p is not None]
        removed = [a for a, p in zip(ids, payloads, strict=True) if p is None]
        return Changes(int(version or 0), stored, removed)

    def get_meta(self, project: str, key: str) -> str | None:
        value = self._redis.hget(self.prefix + project + ":meta", key)
        return value.decode() if isinstance(value, bytes) else value

    def set_meta(self, project: str, key: str, value: str) -> None:
        self._redis.hset(self.prefix + project + ":meta", key, value)

    def counts(self) -> dict[str, int]:
        """Stored examples per project (for the status page); SCAN, so Redis is never blocked."""
        keys = [k.decode() if isinstance(k, bytes) else k for k in self._redis.scan_iter(self.prefix + "*")]
        # only the examples hashes: a project's `:version`, `:changes` and `:meta` keys share the prefix
        return {k[len(self.prefix) :]: int(self._redis.hlen(k)) for k in keys if ":" not in k[len(self.prefix) :]}
