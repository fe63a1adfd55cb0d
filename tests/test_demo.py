"""``make demo``'s script: the daemon on an embedded default, with no account and no config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


class TestDemo:
    """The demo publishes the example repository and folder."""

    def test_demo_once_publishes_both_sources(self, tmp_path: Path) -> None:
        """``demo.py --once`` syncs the example git repository and folder, then exits 0."""
        result = subprocess.run(
            [sys.executable, str(DEMO), "--once"],
            capture_output=True,
            text=True,
            env={**os.environ, "DEMO_DIR": str(tmp_path), "DEMO_PORT": "0"},
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        root = tmp_path / "root"
        assert (root / "flows" / "flows" / "hello.py").is_file()
        assert (root / "flows" / "flows" / "etl" / "pipeline.py").is_file()
        assert (root / "shared" / "settings.json").is_file()
        assert (root / "flows").is_symlink()
        assert "curl -s 'http://127.0.0.1:" in result.stdout
        assert '"event": "daemon_ready"' in result.stdout
