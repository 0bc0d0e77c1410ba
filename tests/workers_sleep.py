"""A pool task that sleeps (importable by spawned workers, for tests/test_workers.py)."""

import time


def sleep_task(_args: tuple) -> dict:
    time.sleep(60)
    return {}
