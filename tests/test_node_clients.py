"""Node.js drivers through the pooled endpoint: node-postgres named queries and postgres.js defaults.

Both prepare statements per connection and bind them later, the pattern that breaks under naive
transaction pooling. The drivers are installed from tests/node/package-lock.json (scripts/test runs
`npm ci` there); Node.js is part of every machine image this project runs on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from harness import make_config, running_pooler
from support import PostgresServer

NODE_DIR = Path(__file__).parent / "node"


def test_node_drivers_prepare_and_bind_across_two_servers(postgres: PostgresServer) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is required for the driver tests"
    assert (NODE_DIR / "node_modules" / "pg").is_dir(), "run `npm ci` in tests/node (scripts/test does)"
    with running_pooler(make_config(postgres, default_pool_size=2)) as pooler:
        result = subprocess.run([node, "prepared.mjs", pooler.dsn(), "15", "20"], cwd=NODE_DIR,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["ok"] is True
        # The drivers' statements went through the pooler's statement cache, shared by both servers.
        assert pooler.call(lambda p: len(p.statements)) >= 4
