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
from feedbackbot.notify import NotificationPolicy, admin_target_id
from feedbackbot.settings import AppSettings, load_settings


def build_app(args: dict[str, Any]) -> Application:
    """Validate the builder arguments and bind every deployment into one application."""
    settings = load_settings(AppSettings, args)

    customer_url = settings.customer_notify_url.get_secret_value() if settings.customer_notify_url else None
    admin_urls = [url.get_secret_value() for url in settings.admin_notify_urls]
    policy = NotificationPolicy(
        customer_enabled=customer_url is not None,
        admin_target_ids=tuple(admin_target_id(url) for url in admin_urls),
        alert_max_rating=settings.admin_alert_max_rating,
    )

    enrichment = Enrichment.bind(settings.sentiment_model, settings.torch_threads)
    persistence = Persistence.bind(
        settings.db_path,
        settings.idempotency_window_s,
        policy,
        enrichment,
        settings.enrichment_retry(),
        settings.snapshots(),
        settings.retention(),
    )
    return Ingest.bind(
        Validation.bind(),
        enrichment,
        persistence,
        Notification.bind(persistence, customer_url, admin_urls, settings.notify_settings()),
        settings.idempotency_window_s,
        settings.stage_timeouts(),
    )
