"""External tools the deployment and browser tests use, found (or installed) the way .ci/run installs them.

npm packages go to `.cache/npm` (git-ignored) with pinned versions; Debian packages and the PyPI ones are
installed by .ci/run and scripts/install.sh --test. A tool that cannot be had makes its test skip with
the reason, never fail on the missing tool.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.stack import ROOT

NPM_PREFIX = ROOT / ".cache" / "npm"
NPM_MANIFEST = ROOT / "tests" / "ui" / "package.json"  # the pinned versions; .ci/run installs from it too
CHROMIUM = Path("/usr/bin/chromium")


def npm_package(name: str) -> Path | None:
    """`.cache/npm/node_modules/<name>` at the version tests/ui/package.json pins, installing it if npm can."""
    folder = NPM_PREFIX / "node_modules" / name
    wanted = json.loads(NPM_MANIFEST.read_text())["dependencies"][name]
    if (folder / "package.json").is_file() and json.loads((folder / "package.json").read_text())["version"] == wanted:
        return folder
    npm = shutil.which("npm")
    if npm is None:
        return None
    # All at once, from the manifest (npm prunes what the prefix's package.json does not list).
    NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(NPM_MANIFEST, NPM_PREFIX / "package.json")
    proc = subprocess.run([npm, "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"})
    if proc.returncode != 0:
        sys.stderr.write(f"npm install (tests/ui/package.json) failed:\n{proc.stderr[-2000:]}\n")
        return None
    return folder if (folder / "package.json").is_file() else None


def venv_tool(name: str) -> str | None:
    """A console script installed next to the running interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)
