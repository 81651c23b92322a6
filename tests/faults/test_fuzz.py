"""Property-based run of the whole HTTP API from its own OpenAPI schema (schemathesis).

Every operation is called with generated input (valid and invalid) and a valid admin key
against a live ``ppserver``: no answer may be a 5xx, every status code must be
documented, and every answer must match its documented schema, content type and headers.

Not checked, by design: schema-valid input the server refuses on meaning (a hash that
does not match the bytes, an unknown pagination cursor) and lenient parsing the schema
does not promise (``/put_files`` reports invalid records per record with 200).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from putplace.server.app import create_app
from tests.conftest import make_settings
from tests.support.processes import BIN, ppserver_process, run_ppserver

ROOT = Path(__file__).resolve().parents[2]

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
])  # fmt: skip


@pytest.mark.slow
def test_api_never_fails_and_matches_its_schema(
    request: pytest.FixtureRequest, stack: str, tmp_path: Path
) -> None:
    # Quotas and trust domains set, so their checks run under the fuzzer too.
    settings = make_settings(request, stack, tmp_path, fsync=True, trust_domains="default,lab",
                             quotas="default:files=1000000,bytes=1G")  # fmt: skip
    created = run_ppserver(
        settings, "keys", "create", "--name", "fuzz", "--scope", "admin", "--json", cwd=tmp_path
    )
    key = json.loads(created.stdout)["api_key"]
    with ppserver_process(settings, tmp_path) as url:
        result = subprocess.run(
            [
                str(BIN / "schemathesis"), "run", f"{url}/openapi.json",
                "-H", f"X-API-Key: {key}", "--checks", CHECKS,
                "--max-examples", "40", "--seed", "20261124",
                "--generation-database", "none",
            ],
            capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.faults.fuzz_hooks",
                 "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    summary = result.stdout[-3000:]
    print(summary)
    assert result.returncode == 0, summary
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert tested is not None
    operations = create_app(settings).openapi()["paths"].values()
    assert int(tested.group(1)) == sum(len(methods) for methods in operations)
