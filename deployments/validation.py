"""Validation deployment: turns a decoded request body into a submission or field errors."""

from __future__ import annotations

import logging

from ray import serve

from models.feedback import ValidationResult, validate_submission

logger = logging.getLogger("ray.serve")


@serve.deployment
class Validation:
    """Stateless pydantic validation; scaled out by Serve's autoscaler."""

    def validate(self, payload: object, from_form: bool = False) -> ValidationResult:
        """Validate one body; `from_form` allows a rating sent as a digit string."""
        result = validate_submission(payload, from_form=from_form)
        if result.errors:
            fields = ", ".join(error.field for error in result.errors)
            logger.info("Rejected a submission: invalid %s", fields)
        return result

    def validate_many(self, payloads: list[object]) -> list[ValidationResult]:
        """Validate the items of a batch, each on its own, in order."""
        results = [validate_submission(payload) for payload in payloads]
        rejected = sum(1 for result in results if result.errors)
        if rejected:
            logger.info("Rejected %d of %d submissions in a batch", rejected, len(results))
        return results

    def health(self) -> dict[str, str]:
        return {"status": "ok"}
