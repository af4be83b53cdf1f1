"""A serving process settles its garbage collector once its app is built (app/gc_policy.py):
what exists then is frozen out of every later collection, and the young generation is
collected every 10,000 allocations instead of 700. Checked in a process of its own, built by
the factory uvicorn's workers call, since the settings are the whole process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import gc, json
before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
from app.main import app_from_env
app_from_env()
after = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
print(json.dumps({"before": before, **after}))
"""


def test_the_worker_factory_freezes_the_built_app_and_widens_the_young_generation(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PAYCODE_DATABASE_URL": f"sqlite:///{tmp_path / 'gc.db'}",
        "PAYCODE_BROKER_URL": "memory://",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"]["frozen"] == 0
    assert seen["before"]["threshold"][0] == 700
    assert seen["threshold"][0] == 10_000
    assert seen["threshold"][1:] == seen["before"]["threshold"][1:]
    # The modules and the app: tens of thousands of objects no collection walks again.
    assert seen["frozen"] > 10_000
