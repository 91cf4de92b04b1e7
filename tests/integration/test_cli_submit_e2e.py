"""`feedbackbot submit` sends the committed sample set through the real gateway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedbackbot.cli import main
from models.feedback import validate_submission
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "datasets" / "feedback_samples.jsonl"


def test_sample_set_submitted(stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()
    payloads = [json.loads(line) for line in lines]
    outcomes = [validate_submission(payload) for payload in payloads]
    expected_valid = sum(1 for outcome in outcomes if outcome.submission is not None)
    output = tmp_path / "results.jsonl"

    exit_code = main(
        ["submit", str(SAMPLES), "--url", stack.url, f"--api-key={stack.keys.submit}", "--output", str(output)]
    )

    summary = capsys.readouterr().out
    assert exit_code == 0, summary
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(results) == len(lines)
    accepted = [result for result in results if result["outcome"] == "accepted"]
    rejected = [result for result in results if result["outcome"] == "rejected"]
    assert len(accepted) == expected_valid
    assert len(rejected) == len(lines) - expected_valid
    assert {result["status"] for result in rejected} == {422}
    assert str(expected_valid) in summary

    for result in accepted:
        submission = outcomes[result["line"] - 1].submission
        assert submission is not None, f"line {result['line']} was accepted but fails local validation"
        stack.accepted[result["id"]] = {
            **submission.model_dump(),
            "request_id": None,
            "sentiment_label": result["sentiment"]["label"],
        }
    for result in rejected:
        assert outcomes[result["line"] - 1].submission is None
