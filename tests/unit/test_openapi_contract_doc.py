"""The generated OpenAPI schema documents what the gateway adds, and FastAPI errors keep their headers."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.ingest import api
from feedbackbot.http_api import PUBLIC_PATHS, install_error_handlers


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return api.openapi()


def responses_of(schema: dict[str, Any]):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                yield f"{method.upper()} {path} {status}", status, response


def test_every_response_documents_request_id(schema: dict[str, Any]) -> None:
    missing = [label for label, _, response in responses_of(schema) if "X-Request-ID" not in response.get("headers", {})]

    assert missing == []


def test_created_documents_location(schema: dict[str, Any]) -> None:
    created = [response for _, status, response in responses_of(schema) if status == "201"]

    assert created
    for response in created:
        assert response["headers"]["Location"]["required"] is True


def test_error_429_and_503_document_retry_after(schema: dict[str, Any]) -> None:
    error_ref = "#/components/schemas/ErrorResponse"
    checked = 0
    for label, status, response in responses_of(schema):
        if status not in ("429", "503"):
            continue
        if response["content"]["application/json"]["schema"].get("$ref") != error_ref:
            continue
        checked += 1
        assert "Retry-After" in response["headers"], label

    assert checked > 0


def test_api_key_required_except_health(schema: dict[str, Any]) -> None:
    assert schema["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert schema["security"] == [{"ApiKey": []}]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path in PUBLIC_PATHS:
                assert operation["security"] == [], path
            else:
                assert "security" not in operation, path


def test_health_documents_503(schema: dict[str, Any]) -> None:
    assert "503" in schema["paths"]["/healthz"]["get"]["responses"]


def test_method_not_allowed_keeps_allow_header() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/items")
    async def create_item() -> dict[str, str]:
        return {}

    response = TestClient(app).get("/items")

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"
