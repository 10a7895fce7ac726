"""The op-coverage tables in the march READMEs are generated from the seeds and the installed tables."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_coverage_tables_are_up_to_date():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "op_coverage.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
