"""The API process never imports TensorFlow (it must start in a second and stay small)."""

import subprocess
import sys

from harness import ROOT

PROBE = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
from recognition_api.wsgi import application
from django.test import Client
from django.urls import get_resolver
for pattern in get_resolver().url_patterns:
    getattr(pattern, "callback", None)
client = Client(HTTP_HOST="localhost")
import recognition_api.services, config.celery_app  # the enqueue path
assert client.get("/healthz").status_code == 200
assert client.get("/openapi.json").status_code == 200
HEAVY = ("tensorflow", "keras", "onnxruntime", "cv2", "rapidocr_onnxruntime")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print("HEAVY:" + ",".join(heavy))
"""


def test_the_api_process_does_not_import_tensorflow() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("HEAVY:"))
    assert line == "HEAVY:", f"the API imported {line[6:]}"


def test_the_probe_would_notice_tensorflow() -> None:
    """Guard against a probe that cannot fail: importing the backend is detected."""
    probe = PROBE.replace("from django.test import Client",
                          "from django.test import Client\nimport workers.runtime.tensorflow_backend")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "tensorflow" in result.stdout
