"""Enrichment deployment: sentiment of each feedback text, scored in batches."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

from ray import serve

from feedbackbot.errors import EnrichmentError
from feedbackbot.logcontext import as_request
from feedbackbot.metrics import EnrichmentMetrics
from feedbackbot.sentiment import SentimentModel, join_shares, label_for_score, split_for_workers
from feedbackbot.settings import EnrichmentSettings, load_settings
from models.feedback import Sentiment, TextToScore

logger = logging.getLogger("ray.serve")

# A batch in the 'timeout' failure drill hangs until the drill ends, at most this long.
DRILL_HANG_MAX_S = 60.0


@serve.deployment
class Enrichment:
    """Holds one sentiment model and scores concurrent calls together with @serve.batch."""

    def __init__(self, model_path: str, torch_threads: int) -> None:
        logger.info("Loading sentiment model %s with %d torch thread(s)", model_path, torch_threads)
        self._model = SentimentModel.load(model_path, num_threads=torch_threads)
        self._settings = EnrichmentSettings()
        self._metrics = EnrichmentMetrics()
        logger.info("Loaded sentiment model %s", self._model.version)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch sizes, batch wait and neutral band from user_config without a restart."""
        self._settings = load_settings(EnrichmentSettings, user_config)
        self._score_batch.set_max_batch_size(self._settings.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self._settings.batch_wait_timeout_s)
        logger.info("Applied enrichment settings %s", self._settings.model_dump())

    async def analyze(self, text: str, feedback_id: UUID | None = None) -> Sentiment:
        """Return the sentiment of one text; concurrent calls share a model batch.

        `feedback_id` names the feedback in the log line. Ingest and the late scoring in
        persistence pass it.
        """
        score = await self._score_batch(text)
        label = label_for_score(
            score, neutral_low=self._settings.neutral_low, neutral_high=self._settings.neutral_high
        )
        self._metrics.count_labels([label])
        if feedback_id is not None:
            logger.info(
                "Scored feedback %s: %s (%.2f)", feedback_id, label, score, extra={"feedback_id": str(feedback_id)}
            )
        return Sentiment(label=label, score=score, model_version=self._model.version)

    async def analyze_each(self, items: list[TextToScore]) -> list[Sentiment]:
        """Return the sentiment of each text of a group of concurrent single submissions, in order.

        Ingest groups them to save calls. The texts join the same model batches as `analyze`
        calls, and each log line carries its own item's request id.
        """

        async def analyze_one(item: TextToScore) -> Sentiment:
            with as_request(item.request_id):
                return await self.analyze(item.text, item.feedback_id)

        return list(await asyncio.gather(*(analyze_one(item) for item in items)))

    async def analyze_many(self, texts: list[str]) -> list[Sentiment]:
        """Return the sentiment of each text of a submitted batch, in order.

        The texts are scored directly, sorted by length in forward passes of model_batch_size,
        without waiting for other callers.
        """
        self._metrics.observe_batch("submitted_batch", len(texts))
        scores = await self._predict(texts)
        band = {"neutral_low": self._settings.neutral_low, "neutral_high": self._settings.neutral_high}
        sentiments = [
            Sentiment(label=label_for_score(score, **band), score=score, model_version=self._model.version)
            for score in scores
        ]
        self._metrics.count_labels(sentiment.label for sentiment in sentiments)
        return sentiments

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _score_batch(self, texts: list[str]) -> list[float]:
        self._metrics.observe_batch("serve_batch", len(texts))
        return await self._predict(texts)

    async def _predict(self, texts: list[str]) -> list[float]:
        """Return P(positive) of each text; raises EnrichmentError when the model fails."""
        await self._run_failure_drill(len(texts))
        batch_size = self._settings.model_batch_size
        shares = split_for_workers(texts, batch_size, self._settings.model_workers)
        try:
            # The model runs in worker threads so that the replica keeps accepting calls,
            # which then form the next batch. Torch releases the GIL inside its kernels, so
            # the threads' forward passes run in parallel.
            share_scores = await asyncio.gather(
                *(
                    asyncio.to_thread(self._model.predict_positive, [texts[index] for index in share], batch_size=batch_size)
                    for share in shares
                )
            )
        except (RuntimeError, ValueError) as error:
            raise EnrichmentError(
                f"Sentiment model {self._model.version} failed on a batch of {len(texts)} texts: {error}"
            ) from error

        return join_shares(shares, share_scores, len(texts))

    async def _run_failure_drill(self, batch_size: int) -> None:
        """Fail or hang this batch while a failure drill is configured; return at once otherwise."""
        if self._settings.failure_drill == "off":
            return

        if self._settings.failure_drill == "timeout":
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DRILL_HANG_MAX_S
            while self._settings.failure_drill == "timeout" and loop.time() < deadline:
                await asyncio.sleep(0.1)
        if self._settings.failure_drill != "off":
            raise EnrichmentError(
                f"Failure drill '{self._settings.failure_drill}' failed a batch of {batch_size} texts; "
                "set failure_drill to 'off' in the Enrichment user_config to end it."
            )

    def ready(self) -> dict[str, object]:
        """Return readiness for /readyz: ready once the model is loaded, also during a failure drill."""
        model = getattr(self, "_model", None)
        if model is None:
            return {"ready": False, "reason": "the sentiment model is not loaded"}
        return {"ready": True, "model_version": model.version}

    def health(self) -> dict[str, str]:
        status = "ok" if self._settings.failure_drill == "off" else "failing"
        return {"status": status, "model_version": self._model.version, "failure_drill": self._settings.failure_drill}
