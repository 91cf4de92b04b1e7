"""Binds the feedback graph: ingest -> validation -> enrichment -> persistence -> notification.

serve_config.yaml imports `graph:build_app` and passes its `args`, which are validated as
`AppSettings`. Per-deployment settings (replicas, autoscaling, resources, user_config) live
in serve_config.yaml and override the decorators' defaults.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.enrichment import Enrichment
from deployments.ingest import Ingest
from deployments.notification import Notification
from deployments.persistence import Persistence
from deployments.validation import Validation
from feedbackbot.settings import AppSettings, load_settings


def build_app(args: dict[str, Any]) -> Application:
    """Validate the builder arguments and bind every deployment into one application."""
    settings = load_settings(AppSettings, args)

    customer_url = settings.customer_notify_url.get_secret_value() if settings.customer_notify_url else None
    admin_urls = [url.get_secret_value() for url in settings.admin_notify_urls]

    return Ingest.bind(
        Validation.bind(),
        Enrichment.bind(settings.sentiment_model, settings.torch_threads),
        Persistence.bind(settings.db_path, settings.idempotency_window_s),
        Notification.bind(
            customer_url,
            admin_urls,
            settings.admin_alert_max_rating,
            settings.notify_timeout_s,
            settings.notify_queue_max,
        ),
        settings.idempotency_window_s,
    )
