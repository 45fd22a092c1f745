"""Drill 16: schemathesis over /openapi.json against the running stack: zero 5xx, zero schema violations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.stack import Stack


def test_schemathesis_finds_no_server_errors_or_schema_violations(stack: Stack, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [str(st), "--no-color", "run", f"{stack.base_url}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance", "--max-examples", "10",
         "--request-timeout", "120", "--seed", "1"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " 0 passed" not in result.stdout
