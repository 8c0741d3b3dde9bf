"""What the test agents observe (their tool started, finished, was cancelled), for the tests.

In the test process the records are in ``OBSERVED``; a server in another process appends
them as JSON lines to the file that ``ADK_CANCEL_TEST_EVENTS`` names.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

EVENTS_ENV = "ADK_CANCEL_TEST_EVENTS"
OBSERVED: list[dict[str, Any]] = []


def observe(kind: str, **fields: Any) -> None:
    record = {"event": kind, "t": time.time(), **fields}
    OBSERVED.append(record)
    path = os.environ.get(EVENTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
