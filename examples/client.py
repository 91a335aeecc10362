"""A small client of the recognition API: post a photo, wait for the suggestions, send feedback.

    RECOGNITION_API_KEY=... python examples/client.py photo.jpg
    python examples/client.py photo.jpg --url http://127.0.0.1:8000 --key ... --listed category=home

It prints the four suggestions (a blank field is below its confidence threshold: the app leaves it
empty), then tells the service what the seller finally listed: the suggestions as they are, with
the fields given by ``--listed`` changed. Needs only httpx (``pip install httpx``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

FIELDS = ("name", "category", "brand", "color")


def recognize(client: httpx.Client, photo: Path, *, wait: float = 10.0, timeout: float = 60.0) -> dict[str, Any]:
    """The finished job for ``photo``: one upload, then waits on the job until it is done."""
    deadline = time.monotonic() + timeout
    with photo.open("rb") as f:
        response = client.post("/v1/recognize", params={"wait": wait}, files={"image": (photo.name, f)})
    while response.status_code == 429 or response.status_code == 503:  # busy: come back when told
        retry = float(response.headers.get("Retry-After", "1"))
        if time.monotonic() + retry > deadline:
            break
        time.sleep(retry)
        with photo.open("rb") as f:
            response = client.post("/v1/recognize", params={"wait": wait}, files={"image": (photo.name, f)})
    _raise_for_error(response)
    job = response.json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        response = client.get(job["location"], params={"wait": wait})
        _raise_for_error(response)
        job = response.json()
    return job


def send_feedback(client: httpx.Client, job: dict[str, Any], listed: dict[str, str | None]) -> dict[str, Any]:
    response = client.post(f"{job['location']}/feedback", json=listed)
    _raise_for_error(response)
    return response.json()


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError):
            error = {"code": "http_error", "message": response.text[:200]}
        raise ApiError(response.status_code, error["code"], error["message"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--url", default=os.environ.get("RECOGNITION_API_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("RECOGNITION_API_KEY"),
                        help="API key (default: $RECOGNITION_API_KEY)")
    parser.add_argument("--listed", action="append", default=[], metavar="FIELD=VALUE",
                        help="what the seller changed before listing (repeatable; FIELD= for a blank)")
    parser.add_argument("--no-feedback", action="store_true", help="only print the suggestions")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("give --key or set RECOGNITION_API_KEY")
    with httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.key}"}, timeout=60) as client:
        try:
            job = recognize(client, args.photo)
        except ApiError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        if job["status"] != "succeeded":
            error = job.get("error") or {"code": job["status"], "message": "not finished in time"}
            print(f"job {job['id']}: {error['code']}: {error['message']}", file=sys.stderr)
            return 1
        print(f"job {job['id']} (model {job['model']['name']} {job['model']['version']}, "
              f"{job['timings_ms'].get('total', 0):.0f} ms)")
        for name in FIELDS:
            field = job["result"][name]
            shown = field["value"] if field["value"] is not None else "(blank: below its threshold)"
            print(f"  {name:9} {shown}  [{field['confidence']:.2f} / {field['threshold']:.2f}]")
        if args.no_feedback:
            return 0
        listed: dict[str, str | None] = {name: job["result"][name]["value"] for name in FIELDS}
        for item in args.listed:
            name, _, value = item.partition("=")
            if name not in FIELDS:
                parser.error(f"--listed {item}: the fields are {', '.join(FIELDS)}")
            listed[name] = value or None
        try:
            counted = send_feedback(client, job, listed)
        except ApiError as exc:
            print(f"feedback refused: {exc}", file=sys.stderr)
            return 1
        print("feedback: " + ", ".join(f"{k} {v}" for k, v in counted["outcomes"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
