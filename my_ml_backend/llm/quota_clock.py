"""The quota day: when ModelScope's free-tier counts start again (`LLM_QUOTA_RESET`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class DayClock:
    """When the quota day starts: `HH:MM [Area/City]` (`LLM_QUOTA_RESET`), e.g. `00:00 Asia/Shanghai`."""

    def __init__(self, spec: str = "00:00 Asia/Shanghai") -> None:
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*(\S*)\s*", spec or "")
        if not match or int(match[1]) > 23 or int(match[2]) > 59:
            raise ValueError(f"LLM_QUOTA_RESET 格式应为 HH:MM [时区] (must be HH:MM [Area/City]), got {spec!r}")
        self.hour, self.minute = int(match[1]), int(match[2])
        self.zone_name = match[3] or "Asia/Shanghai"
        self.zone = _zone(self.zone_name)

    def day(self, now: datetime | None = None) -> str:
        """The quota day `now` belongs to, as `YYYY-MM-DD` (the date its day started)."""
        local = (now or datetime.now(UTC)).astimezone(self.zone)
        return (local - timedelta(hours=self.hour, minutes=self.minute)).date().isoformat()

    def next_reset(self, now: datetime | None = None) -> datetime:
        """The next start of a quota day, in the clock's zone."""
        local = (now or datetime.now(UTC)).astimezone(self.zone)
        reset = local.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        return reset if reset > local else (reset + timedelta(days=1)).replace(tzinfo=self.zone)

    def describe_reset(self, now: datetime | None = None) -> tuple[str, str]:
        """(`HH:MM`, `YYYY-MM-DD HH:MM Zone (HH:MM UTC)`) of the next reset, for messages."""
        reset = self.next_reset(now)
        utc = reset.astimezone(UTC)
        return reset.strftime("%H:%M"), f"{reset:%Y-%m-%d %H:%M} {self.zone_name} ({utc:%H:%M} UTC)"


def _zone(name: str) -> tzinfo:
    """The IANA zone `name` (the `tzdata` package supplies the database where the system has none)."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"LLM_QUOTA_RESET 的时区未知 (unknown time zone in LLM_QUOTA_RESET) {name!r}") from None
