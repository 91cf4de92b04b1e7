"""Browser pages of feedbackbot, rendered by the ingest deployment.

- `form`: the public feedback form at `/` with its thank-you page, spam checks and
  idempotency key.
- `admin`: the admin and analyst view at `/admin` (recent feedback, filters, the outbox's
  dead entries, a chart by day).
- `pages`: templates, security headers and the static assets under `/static/`.

The pages live in the graph, not as static files of the gateway, so the form post runs the
same validation, idempotency and storage code as `POST /v1/feedback`, and the server-side
rendering escapes every customer string with Jinja's autoescape. The gateway only routes and
authenticates (docs/web.md).
"""
