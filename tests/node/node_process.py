"""Child process of the node fault tests: one node app under Hypercorn until SIGTERM or SIGKILL.

Usage: ``python -m tests.node.node_process DATA_DIR PORT DIRECTORY_URL DIRECTORY_KEY``

The data directory holds the node's keystore (created by the test); the node starts its own
jail under a supervisor, exactly as a served node does, and serves on 127.0.0.1:PORT.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from openred.node.app import create_app
from openred.node.settings import NodeSettings
from openred.web.serve import hypercorn_config, serve_app


def main(argv: list[str]) -> int:
    data_dir, port, directory_url, directory_key = argv
    settings = NodeSettings(
        data_dir=Path(data_dir), host="127.0.0.1", port=int(port),
        public_url=f"http://127.0.0.1:{port}", allow_private_urls=True,
        directory_url=directory_url, directory_key=directory_key, lifecycle_interval=3600,
    )
    app = create_app(settings)
    asyncio.run(serve_app(app, hypercorn_config(settings.host, settings.port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
