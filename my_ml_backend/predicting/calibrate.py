"""Calibrate a batch's answers: content-free priors per prompt language, then the project's score maps.

The priors are asked once per language, through the `answer` callable the predictor passes down (one
uncalibrated answer for a task, or None), at the end of the first batch whose answers had choice
distributions, and only with a quarter of that batch's time left.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..labeling import calibration
from ..labeling.answers import TaskAnswer

logger = logging.getLogger(__name__)


class BatchCalibration:
    """The content-free priors of one predictor (asked once per prompt language) and its score maps."""

    def __init__(
        self,
        data_keys: list[str],
        answer: Callable[[dict[str, Any]], TaskAnswer | None],
        maps: calibration.ScoreMaps | None = None,
    ) -> None:
        self.data_keys, self.answer, self.maps = data_keys, answer, maps
        self.priors: calibration.Priors = {}
        self._asked: set[str] = set()  # prompt languages whose priors were asked for
        self._lock = threading.Lock()

    def calibrate_batch(
        self, answers: list[TaskAnswer], deadline: float | None, batch_seconds: float
    ) -> list[TaskAnswer]:
        """The answers calibrated and mapped, in order (priors asked first by the first batch that needs them)."""
        wanted = {a.language for a in answers if a.choices}
        with self._lock:
            late = deadline is not None and deadline - time.monotonic() < batch_seconds / 4
            missing = set() if late else wanted - self._asked
            self._asked |= missing  # once, whatever comes back: a failing endpoint is not asked every batch
        if missing:
            self._ask_priors(missing, deadline)
        with self._lock:
            priors = dict(self.priors)
        return [calibration.calibrate_answer(a, priors, self.maps) for a in answers]

    def _ask_priors(self, languages: set[str], deadline: float | None) -> None:
        """The priors of `languages`, asked in a thread the batch waits for only until its deadline: Label Studio
        drops a late reply whole. Priors that come later serve the next batches."""

        def ask() -> None:
            found = calibration.content_free_priors(languages, self.data_keys, self.answer)
            with self._lock:
                self.priors.update(found)

        worker = threading.Thread(target=ask, name="content-free-priors", daemon=True)
        worker.start()
        worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            logger.info("校准调用未在批次时限内完成，本批用未校准的分布 (content-free calls not done by the deadline: "
                        "this batch keeps the raw distribution, the next ones are calibrated)")
