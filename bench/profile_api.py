"""Where one `POST /v1/recognize` spends its CPU in the API, step by step.

    python -m bench.profile_api [--requests 500] [--no-profile]

Runs the API in-process (Django's test client: no Gunicorn, no HTTP parsing) on a redis-server of its
own, posts a 1024x768 JPEG ``--requests`` times without waiting for a result, and prints the CPU per
request (``time.process_time``), then, under cProfile, each step's share: rate limit and admission check,
multipart parsing, image check, image store, the create-route-enqueue script, logging, rendering.
cProfile makes everything slower (roughly twice); compare the steps with each other, and the CPU per
request (``--no-profile``) between commits.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path

from harness import start_redis

STEPS = {
    "the whole view (RecognizeApi.post)": ("recognition_api/views.py", "post"),
    "rate limit + admission check (one round trip)": ("recognition_api/services.py", "recognition_precheck"),
    "multipart parsing (request.FILES)": ("django/http/multipartparser.py", "parse"),
    "image check (inspect_image)": ("common/imaging.py", "inspect_image"),
    "image store write": ("common/imagestore.py", "put"),
    "create + route + enqueue script": ("common/jobstore.py", "create"),
    "logging": ("logging/__init__.py", "info"),
    "answer (job_representation)": ("recognition_api/representations.py", "job_representation"),
    "authentication (DRF)": ("rest_framework/request.py", "_authenticate"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--no-profile", action="store_true", help="only the CPU per request")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="profile-api-"))
    redis_process, url = start_redis(tmp)
    try:
        from recognition_api.auth import new_key

        key, digest = new_key()
        os.environ.update(
            DJANGO_SETTINGS_MODULE="config.settings", REDIS_URL=url, METRICS_ENABLED="false",
            IMAGE_STORE_URL=(tmp / "images").as_uri(), DJANGO_ALLOWED_HOSTS="testserver",
            API_KEYS=f"bench:{digest}", API_KEY_RATE="1000000", API_KEY_MAX_JOBS="0", MAX_QUEUE_DEPTH="0",
        )
        import django

        django.setup()
        from django.core.files.uploadedfile import SimpleUploadedFile
        from django.test import Client
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (1024, 768), (200, 30, 30)).save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")

        def post() -> None:
            response = client.post("/v1/recognize", {"image": SimpleUploadedFile("p.jpg", data, "image/jpeg")})
            assert response.status_code == 202, response.content

        for _ in range(50):
            post()
        started = time.process_time()
        for _ in range(args.requests):
            post()
        print(f"CPU per request: {(time.process_time() - started) / args.requests * 1000:.2f} ms "
              f"(in-process, {args.requests} requests)")
        if args.no_profile:
            return 0
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.requests):
            post()
        profile.disable()
        totals: dict[str, float] = {}
        for (file, _line, function), (_cc, _nc, _tt, cumulative, _callers) in pstats.Stats(profile).stats.items():
            for label, (suffix, name) in STEPS.items():
                if file.endswith(suffix) and function == name:
                    totals[label] = totals.get(label, 0.0) + cumulative
        print("under cProfile (slower), ms per request:")
        for label in STEPS:
            print(f"  {label:38} {totals.get(label, 0.0) / args.requests * 1000:6.2f}")
    finally:
        redis_process.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
