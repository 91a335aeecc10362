"""What the tests share besides the stack's processes (those are in harness/)."""

from __future__ import annotations

from harness import REFERENCE_MODEL_ROOT

__all__ = ["REFERENCE_MODEL_ROOT"]
