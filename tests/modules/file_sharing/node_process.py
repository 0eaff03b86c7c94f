"""Child process of the file_sharing fault tests and benchmark: a node with its admin API.

Usage: ``python -m tests.modules.file_sharing.node_process DATA_DIR PORT DIRECTORY_URL
DIRECTORY_KEY ADMIN_PORT``

Serves the node (messaging and file_sharing enabled) exactly as ``openred node serve`` does —
its own jail under a supervisor, the admin API on 127.0.0.1:ADMIN_PORT with the admin URL and
key written to the data directory — until SIGTERM or SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from openred.node.serve import serve_node
from openred.node.settings import NodeSettings


def main(argv: list[str]) -> int:
    data_dir, port, directory_url, directory_key, admin_port = argv
    os.environ["OPENRED_ADMIN_PORT"] = admin_port
    settings = NodeSettings(
        data_dir=Path(data_dir), host="127.0.0.1", port=int(port),
        public_url=f"http://127.0.0.1:{port}", allow_private_urls=True,
        directory_url=directory_url, directory_key=directory_key, lifecycle_interval=3600,
        modules=("messaging", "file_sharing"),
    )
    asyncio.run(serve_node(settings, retry_interval=3600))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
