"""The Label Studio ML backend: an LLM pre-annotates the text of each task.

The story, in Label Studio's order:
- setup: read the project's labeling config and its instructions (ML "extra params"),
  count its annotated examples (one count query: the example index is built in the
  background), read the few-shot form chosen for it, and derive the `model_version`
  that identifies these predictions; no LLM call (Label Studio gives `/setup` 3 s);
- predict: one chat call per task, with the project's instructions and its most
  relevant annotated examples, answers mapped to results valid for the config;
- fit: keep annotations as examples (annotation webhooks), re-read them all on the
  Train button; with `FEWSHOT_EXAMPLES=auto`, measure which few-shot form helps on the
  Train button and when the example count enters a new version bucket, and fit the
  score to how often the project's own annotated tasks were right at each score.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

from label_studio_ml.model import LabelStudioMLBase

from .labeling.prompts import PromptGuidance, context_instruction, guidance_from_params
from .learning import autotune
from .learning.events import examples_bucket, record_event, resync
from .learning.live import ProjectExamples, live_index
from .learning.retrieval import FewShotForm
from .learning.store import open_example_store
from .predicting.factory import build_predictor, project_min_score, schema_for
from .predicting.form_evaluation import evaluate_project
from .settings import Settings, reveal

logger = logging.getLogger(__name__)


class NewModel(LabelStudioMLBase):
    """LLM pre-annotation for Text/HyperText/Paragraphs objects, one instance per (project, config)."""

    settings: ClassVar[Settings]  # the process's, read once by its entry point (`_wsgi.py`, a script) and set here

    # label-studio-ml 1.0.9 lists neither START_TRAINING (the Train button) nor
    # ANNOTATIONS_DELETED (what Label Studio really sends); both must reach fit().
    TRAIN_EVENTS = (
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATION_DELETED",
        "ANNOTATIONS_DELETED",
        "START_TRAINING",
    )

    def __init__(self, label_config: str | None = None, train_output: dict | None = None, **kwargs: Any) -> None:
        super().__init__(label_config=label_config, train_output=train_output, **kwargs)
        self.project_id = str(kwargs.get("project_id") or "")
        self.extra_params: Any = kwargs.get("extra_params")
        self.setup()

    def setup(self, extra_params: Any = None) -> None:
        """Parse the config, apply the project's instructions, fix this model's version; offline and cheap.

        Called again on every `/setup`, so a new instruction or a grown example set
        gives a new version and Label Studio predicts again.
        """
        if extra_params is not None:
            self.extra_params = extra_params
        self.schema = schema_for(self.label_config)
        self.store = open_example_store(self.settings) if self.settings.keeps_annotations and self.project_id else None
        base = PromptGuidance(self.settings.instructions, self.settings.output_language, self.settings.reasoning)
        self.guidance = guidance_from_params(base, self.extra_params)
        count = self._count()
        self.form, self.evaluation = self._form(count)  # the last automatic evaluation (its score maps)
        self.evaluated_at = autotune.finished_at(self.project_id, self.schema.config_hash)
        self.examples = None
        if self.store is not None:
            self.examples = ProjectExamples(self.store, self.project_id, self.schema, self.settings.max_input_chars,
                                            self.form, self.settings.fewshot_max_chars)
        if self.form.k:  # build the index in the background, from just after /setup has answered
            live_index(self.store, self.project_id, self.schema, self.settings.max_input_chars, delay=2.0)
        self.predictor = build_predictor(
            self.label_config, self.settings, self.guidance, self.examples, count, self.form, self.evaluation,
            project_min_score(self.extra_params),
        )
        self.model_version = self.predictor.model_version
        logger.debug(
            "Setup: project=%s model=%s url=%s version=%s texts=%s controls=%s instructions=%d chars "
            "examples=%d form=%s",
            self.project_id,
            self.settings.model,
            self.settings.base_url,
            self.model_version,
            [f"{s.name}<-${s.data_key}" for s in self.schema.sources],
            [f"{t.name}:{t.tag}" for t in self.schema.targets],
            len(self.guidance.instructions),
            count,
            self.form.name,
        )

    def _count(self) -> int:
        """Annotations stored for the project (one count query, not a read of every example)."""
        if self.store is None:
            return 0
        try:
            return self.store.count(self.project_id)
        except Exception as exc:  # noqa: BLE001 - predictions still work without examples
            logger.warning("无法读取示例库 (cannot read the example store): %s", exc)
            return 0

    def _form(self, count: int) -> tuple[FewShotForm, autotune.FewShotEvaluation | None]:
        """The explicit FEWSHOT_EXAMPLES, or the form the last automatic evaluation chose (zero-shot before),
        with that evaluation (its answer strategy, its score maps); starts the next evaluation when one is due."""
        settings = self.settings
        explicit = None if settings.fewshot_auto else FewShotForm(settings.fewshot_k, settings.fewshot_form)
        if self.store is None or not settings.evaluates_projects:
            return explicit or FewShotForm(0), None
        evaluation = autotune.stored_evaluation(self.store, self.project_id, self.schema.config_hash)
        self._autotune(count, evaluation)
        if explicit is not None:
            return explicit, evaluation
        return (FewShotForm.parse(evaluation.form) if evaluation else FewShotForm(0)), evaluation

    def _autotune(self, count: int, evaluation: autotune.FewShotEvaluation | None = None, force: bool = False) -> None:
        """Start the automatic evaluation when due: Train button (`force`), or a new example-count bucket."""
        settings = self.settings
        if not (settings.evaluates_projects and self.store is not None):
            return
        bucket = examples_bucket(count)
        if not force and (count < autotune.MIN_EXAMPLES or (evaluation is not None and evaluation.bucket >= bucket)):
            return

        def run() -> autotune.FewShotEvaluation:
            index = live_index(self.store, self.project_id, self.schema, settings.max_input_chars).current(wait=600)
            if index is None:
                raise RuntimeError("example index not available")
            return evaluate_project(self.label_config, settings, self.guidance, index)

        # Once chosen, this model switches at its next batch (new form, new version); other workers at their /setup.
        if autotune.start(self.store, self.project_id, self.schema.config_hash, bucket, run):
            logger.info("少样本自动评估开始 (few-shot auto evaluation started): project %s, %d examples",
                        self.project_id, count)

    def predict(self, tasks: list[dict[str, Any]], context: dict | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """One prediction per task, in order (failed tasks carry an `error` and no result).

        In interactive mode the annotator's own instruction (a `prompt` TextArea) is
        added to the project's for this request.
        """
        if autotune.finished_at(self.project_id, self.schema.config_hash) > self.evaluated_at:
            self.setup()  # an evaluation finished here since: its form and version from this batch on
        guidance = None
        if instruction := context_instruction(self.schema, context):
            guidance = self.guidance.with_instruction(instruction)
            logger.info("交互式指令 (interactive instruction): %d chars", len(instruction))
        return self.predictor.predict_batch(tasks, guidance, project=self.project_id)

    def fit(self, tasks: Any = (), workdir: str | None = None, event: str | None = None, **kwargs: Any) -> dict:
        """Keep annotations as examples; on START_TRAINING re-read them all from Label Studio.

        Webhooks get 1 s, so the re-read runs in a background thread and the event is
        acknowledged at once.
        """
        data = kwargs.get("data") or {}
        project = data.get("project") or {}
        project_id = str(project.get("id") if isinstance(project, dict) else project or self.project_id)
        logger.info("收到事件 (event received): %s, project %s", event, project_id)
        if self.store is None:
            return {"event": event, "model_version": self.model_version, "examples": "off"}
        done = record_event(self.store, self.schema, project_id, str(event), data)
        if project_id == self.project_id:
            if self.examples is not None and self.form.k:
                self.examples.index().refresh_soon()
            if event == "START_TRAINING":
                done = self._start_resync(project_id)
            else:
                count = self._count()
                self._autotune(count, autotune.stored_evaluation(self.store, project_id, self.schema.config_hash))
        elif event == "START_TRAINING":
            done = self._start_resync(project_id)
        logger.info("示例库 (examples): %s", done)
        return {"event": event, "model_version": self.model_version, "examples": done}

    def _start_resync(self, project_id: str) -> str:
        url, key = self.settings.label_studio_url, reveal(self.settings.label_studio_api_key)
        if not (url and key):
            if project_id == self.project_id:
                self._autotune(self._count(), force=True)
            return "no LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY: kept the examples from annotation webhooks"

        def run() -> None:
            try:
                logger.info("示例库 (examples): %s", resync(self.store, self.schema, project_id, url, key))
            except Exception as exc:  # noqa: BLE001 - a failed re-read keeps what the webhooks stored
                logger.warning("从 Label Studio 重新读取标注失败 (re-reading annotations failed): %s", exc)
            if project_id == self.project_id:
                self._autotune(self._count(), force=True)

        threading.Thread(target=run, name=f"resync-{project_id}", daemon=True).start()
        return "re-reading all annotations from Label Studio in the background"
