"""Contracts of the feedback listing: the filters of GET /v1/feedback and the admin page,
and the per-day counts behind the admin page's chart."""

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

# "pending" selects feedback that has no sentiment yet (the model failed or timed out).
SentimentFilter = Literal["positive", "neutral", "negative", "pending"]

MAX_LIST_LIMIT = 1000


class FeedbackQuery(BaseModel):
    """Filters of a feedback listing; a filter left as None matches every row."""

    rating: int | None = Field(default=None, ge=1, le=5, description="Only feedback with this rating.")
    sentiment: SentimentFilter | None = Field(default=None, description="Only feedback with this sentiment label.")
    since: datetime | None = Field(default=None, description="Only feedback received at or after this time (aware, UTC).")
    until: datetime | None = Field(default=None, description="Only feedback received before this time (aware, UTC).")
    limit: int = Field(default=100, ge=1, le=MAX_LIST_LIMIT, description="Maximum number of rows returned.")


class DailyVolume(BaseModel):
    """Feedback received on one UTC day, counted by sentiment."""

    day: date
    total: int
    positive: int
    neutral: int
    negative: int
    pending: int = Field(description="Feedback of that day that has no sentiment yet.")
