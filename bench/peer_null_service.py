"""Part 5's null-model peer: BentoML serving what our null model computes, to compare the two
serving stacks with (almost) no model in the way.

Run by the benchmark inside var/venv-bench (never the service's .venv):

    BENCH_PEER_WORKERS=1 bentoml serve bench.peer_null_service:NullRecognizer

One BentoML service with a plain API, no ``batchable`` one. The null model's only work is per
photo: decode to 256 px (JPEG draft mode), the mean color, four fields
(``bench.peer_preprocess.null_answer``, tested equal to ``workers.runtime.null``'s answer). There
is nothing to batch: a batchable service would add an internal HTTP call per photo (BentoML's
adaptive batcher lives in the called service) to merge calls that cost nothing, so BentoML is
measured here in the layout it would be deployed in for this job. The decode runs in a thread
(``anyio.to_thread``, as the backbone peer's ``Recognizer`` does), so the event loop keeps taking
requests meanwhile; ``BENCH_PEER_WORKERS`` sets BentoML's worker processes (1 by default; the
benchmark's choice and why is in docs/PERFORMANCE.md). The access log is off, as the API's is.
"""

from __future__ import annotations

import os

import bentoml
from PIL import Image

from bench.peer_preprocess import null_answer

WORKERS = int(os.environ.get("BENCH_PEER_WORKERS", "1"))


@bentoml.service(
    workers=WORKERS,
    traffic={"timeout": 120, "concurrency": 256},
    logging={"access": {"enabled": False}},
)
class NullRecognizer:
    @bentoml.api
    async def recognize(self, image: Image.Image) -> dict:
        import anyio

        return await anyio.to_thread.run_sync(null_answer, image)
