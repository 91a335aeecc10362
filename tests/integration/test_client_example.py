"""examples/client.py against the real stack: it posts a photo, prints the suggestions, and sends
the seller's feedback; a refused upload is reported, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from harness import ROOT, Stack


def client(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "client.py"), *args, "--url", stack.api_url],
                          env={"RECOGNITION_API_KEY": stack.api_key, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_the_example_client_gets_suggestions_and_sends_feedback(stack: Stack, coffee: Image.Image,
                                                                tmp_path: Path) -> None:
    photo = tmp_path / "coffee.jpg"
    coffee.save(photo, quality=90)
    result = client(stack, str(photo), "--listed", "color=orange", "--listed", "brand=")
    assert result.returncode == 0, result.stderr
    assert "category  kitchen_tableware" in result.stdout
    assert "color     red" in result.stdout
    assert "feedback: name accepted, category accepted" in result.stdout
    assert "color changed" in result.stdout and "brand blank" in result.stdout


def test_the_example_client_reports_a_refusal(stack: Stack, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    result = client(stack, str(text))
    assert result.returncode == 1
    assert "refused: 415 image_not_an_image" in result.stderr
    assert "Traceback" not in result.stderr
