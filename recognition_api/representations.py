"""How a job record from Redis is shown to clients."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), tz=UTC).isoformat(timespec="milliseconds")


def _json(value: str | None) -> Any:
    return json.loads(value) if value else None


def job_representation(record: dict[str, str], *, location: str) -> dict[str, Any]:
    status = record.get("status", "queued")
    timings = _json(record.get("timings")) or {}
    if record.get("finished_at") and record.get("created_at"):
        timings["total"] = round(
            (float(record["finished_at"]) - float(record["created_at"])) * 1000, 2
        )
    error = None
    if status == "failed":
        error = {"code": record.get("error_code", "job_failed"), "message": record.get("error_message", "")}
    return {
        "id": record["id"],
        "status": status,
        "model": {"name": record.get("model_name", ""), "version": record.get("model_version", "")},
        "created_at": _iso(record.get("created_at")),
        "started_at": _iso(record.get("started_at")),
        "finished_at": _iso(record.get("finished_at")),
        "timings_ms": timings,
        "result": _json(record.get("result")) if status == "succeeded" else None,
        "error": error,
        "request_id": record.get("request_id") or None,
        "location": location,
    }
