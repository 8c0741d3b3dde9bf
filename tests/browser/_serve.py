"""Run a real API server with the chat page for the browser tests.

Usage: ``python tests/browser/_serve.py PORT``. Serves ``samples/`` (the slow sample agent)
through ``adk_cancel.get_fast_api_app(..., chat=True)`` on 127.0.0.1:PORT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

from adk_cancel import get_fast_api_app

AGENTS_DIR = Path(__file__).resolve().parents[2] / "samples"


def main() -> None:
    port = int(sys.argv[1])
    app = get_fast_api_app(
        agents_dir=str(AGENTS_DIR),
        web=False,
        chat=True,
        session_service_uri="memory://",
        artifact_service_uri="memory://",
        memory_service_uri="memory://",
        use_local_storage=False,
        host="127.0.0.1",
        port=port,
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
