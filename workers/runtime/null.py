"""A model that answers at once: measures the pipeline's own overhead, and lets the
plumbing tests run without TensorFlow. Never the thing a user is served by default."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from common.volume import ModelVolume
from workers.runtime import field


class NullRuntime:
    def __init__(self, volume: ModelVolume) -> None:
        self.volume = volume
        self.decode_max_side = int(volume.manifest.get("input", {}).get("decode_max_side", 256))
        self.delay_s = float(volume.manifest.get("null", {}).get("delay_ms", 0)) / 1000
        # Every batch after the first (the worker's warm-up) stalls this long: a model that hangs
        # once it serves, for the hung-inference watchdog's tests.
        self.stall_s = float(volume.manifest.get("null", {}).get("stall_ms", 0)) / 1000
        self._warmed_up = False

    def load(self) -> None:
        pass

    def prepare(self, rgb: np.ndarray) -> Any:
        return tuple(int(x) for x in rgb.reshape(-1, 3).mean(axis=0))

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.stall_s and self._warmed_up:
            time.sleep(self.stall_s)
        self._warmed_up = True
        results = []
        for mean in batch:
            value = "#{:02x}{:02x}{:02x}".format(*mean)
            results.append({
                "name": field(None, 0.0, 1.0, []),
                "category": field("other", 1.0, 0.0, [("other", 1.0)]),
                "brand": field(None, 0.0, 1.0, []),
                "color": field(value, 1.0, 0.0, [(value, 1.0)]),
            })
        return results

    def unload(self) -> None:
        pass
