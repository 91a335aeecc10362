"""``celery`` under cProfile, timing each function by the CPU of its thread (not wall time): the
worker of ``python -m bench.profile_worker --cprofile``. Usage: ``python -m bench.cprofiled_celery
OUT.prof [celery arguments]``; the profile is written when the worker exits (SIGTERM).

cProfile sees the thread that enables it only: run the worker with ``--pool solo``, so that the
consumer and the tasks share the main thread."""

from __future__ import annotations

import atexit
import cProfile
import sys
import time


def main() -> None:
    out = sys.argv[1]
    sys.argv = ["celery", *sys.argv[2:]]
    profile = cProfile.Profile(time.thread_time)

    def dump() -> None:
        profile.disable()
        profile.dump_stats(out)

    atexit.register(dump)
    profile.enable()
    from celery.__main__ import main as celery_main

    celery_main()


if __name__ == "__main__":
    main()
