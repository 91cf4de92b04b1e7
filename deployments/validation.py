"""Validation deployment: turns a decoded request body into a submission or field errors."""

from __future__ import annotations

import logging
from uuid import UUID

from ray import serve

from feedbackbot.logcontext import as_request
from models.feedback import SubmissionToCheck, ValidationResult, validate_submission

logger = logging.getLogger("ray.serve")


@serve.deployment
class Validation:
    """Stateless pydantic validation; scaled out by Serve's autoscaler."""

    def validate(self, payload: object, from_form: bool = False, feedback_id: UUID | None = None) -> ValidationResult:
        """Validate one body; `from_form` allows a rating sent as a digit string.

        `feedback_id` is the id that ingest gives the feedback when it is valid; only the
        log line uses it.
        """
        result = validate_submission(payload, from_form=from_form)
        if result.errors:
            fields = ", ".join(error.field for error in result.errors)
            logger.info("Rejected a submission: invalid %s", fields)
        elif feedback_id is not None:
            logger.info("Validated the submission of feedback %s", feedback_id, extra={"feedback_id": str(feedback_id)})
        return result

    def validate_each(self, items: list[SubmissionToCheck]) -> list[ValidationResult]:
        """Validate a group of concurrent single submissions, in order.

        Ingest groups them to save calls. Each log line carries its own item's request id.
        """
        results = []
        for item in items:
            with as_request(item.request_id):
                results.append(self.validate(item.payload, item.from_form, item.feedback_id))
        return results

    def validate_many(self, payloads: list[object]) -> list[ValidationResult]:
        """Validate the items of a batch, each on its own, in order."""
        results = [validate_submission(payload) for payload in payloads]
        rejected = sum(1 for result in results if result.errors)
        if rejected:
            logger.info("Rejected %d of %d submissions in a batch", rejected, len(results))
        return results

    def health(self) -> dict[str, str]:
        return {"status": "ok"}

    def ready(self) -> dict[str, object]:
        """Return readiness for /readyz: validation has no state, so any response means ready."""
        return {"ready": True}
