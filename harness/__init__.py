"""Real processes of a local stack: redis-server, Gunicorn, Celery workers and moto's S3, each on
a free loopback port with its own environment, so that neither the tests nor the benchmark touch
the machine's own Redis or each other. The tests and the benchmark both start their stacks here.
"""

from harness.processes import (
    REFERENCE_MODEL_ROOT,
    ROOT,
    Process,
    free_port,
    spawn,
    start_redis,
    start_sentinel,
    wait_until,
)
from harness.stack import Stack, one_worker_stack, stack_env

__all__ = [
    "REFERENCE_MODEL_ROOT",
    "ROOT",
    "Process",
    "Stack",
    "free_port",
    "one_worker_stack",
    "spawn",
    "stack_env",
    "start_redis",
    "start_sentinel",
    "wait_until",
]
