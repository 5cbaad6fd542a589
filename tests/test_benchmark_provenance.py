"""Benchmark results record the commit that produced them (benchmarks/_provenance.py)."""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_provenance_names_the_checked_out_commit():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _provenance import provenance
    finally:
        sys.path.remove(str(BENCHMARKS))
    record = provenance()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True)
    expected = head.stdout.strip() if head.returncode == 0 else "unknown"
    assert record["commit"] == expected
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["date"])


def test_every_script_that_writes_json_records_provenance():
    for script in sorted(BENCHMARKS.glob("*.py")):
        text = script.read_text()
        if "json.dump" in text and not script.name.startswith("_"):
            # document_header (via heldout_run too) puts it in the header of the document
            assert any(call in text for call in ("provenance()", "document_header(", "heldout_run(")), \
                f"{script.name} writes JSON without provenance"
