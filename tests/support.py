"""What the tests share besides the stack's processes (those are in harness/)."""

from __future__ import annotations

import os
from pathlib import Path

from harness import ROOT

REFERENCE_MODEL_ROOT = Path(os.environ.get("MODEL_ROOT", ROOT / "var" / "models"))
