"""Pydantic contracts passed between the deployments of the feedback graph."""

from models.feedback import (
    AcceptedSubmission,
    ErrorDetail,
    ErrorResponse,
    FeedbackCreated,
    FeedbackRecord,
    FeedbackSubmission,
    FieldError,
    IdempotencyClaim,
    Sentiment,
    SentimentOut,
    StoredFeedback,
    StoreOutcome,
    ValidationResult,
    validate_submission,
)

__all__ = [
    "AcceptedSubmission",
    "ErrorDetail",
    "ErrorResponse",
    "FeedbackCreated",
    "FeedbackRecord",
    "FeedbackSubmission",
    "FieldError",
    "IdempotencyClaim",
    "Sentiment",
    "SentimentOut",
    "StoredFeedback",
    "StoreOutcome",
    "ValidationResult",
    "validate_submission",
]
