"""One adk-cancel API server process, for the multi-worker tests and the Redis bench.

    python tests/backends/_worker.py PORT CANCEL_BACKEND_URL SESSION_DB

Serves ``samples/`` on 127.0.0.1:PORT with the sessions in the SQLite file SESSION_DB (so
several workers see the same sessions) and runs registered through CANCEL_BACKEND_URL.
Set ``SLOW_AGENT_EVENTS`` to a file to record what the slow agent observes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import uvicorn

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    port, backend_url, session_db = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).resolve()
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    import adk_cancel

    app = adk_cancel.get_fast_api_app(
        agents_dir=str(ROOT / "samples"),
        web=False,
        session_service_uri=f"sqlite:///{session_db}",
        artifact_service_uri="memory://",
        memory_service_uri="memory://",
        cancel_backend=backend_url,
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
