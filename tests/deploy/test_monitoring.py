"""The monitoring artefacts in ``deploy/`` stay true to the server.

* ``deploy/prometheus/alerts.yml`` passes ``promtool check rules``, and its unit tests
  (``alerts.test.yml``) pass ``promtool test rules``, with a firing case for every alert.
* ``deploy/grafana/putplace.json`` is an importable dashboard whose every panel queries
  the Prometheus data source, and whose every expression parses.
* Every metric name the alert rules and the dashboard use is one a real ``ppserver serve``
  exports after a small workload, in one process and with two workers, except the few
  names only some deployments export (``CONDITIONAL``).

promtool comes from the Debian package ``prometheus`` (``make setup`` installs it).
Without it these tests are skipped, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from putplace.config import Settings
from tests.server.test_metrics import content_workload
from tests.server.test_tls import self_signed
from tests.support.processes import (
    BIN,
    run_ppserver,
    settings_env,
    stop_process,
    wait_until_healthy,
)
from tests.support.servers import free_port

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "putplace.json"
SOURCE = ROOT / "src" / "putplace"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

#: Names the rules or the dashboard may use although the test server does not export
#: them, because only some deployments do. Keep this list short: every other name must
#: come out of a real scrape. (The TLS certificate and blob disk metrics are not here:
#: the test server serves HTTPS from a local disk, so it must export them.)
CONDITIONAL = {
    # Only with PUTPLACE_REDIS_URL set; the test server runs without Redis.
    "putplace_redis_up",
    "putplace_redis_fallbacks_total",
    # Prometheus' own series for each scrape target, never in /metrics.
    "up",
}

# ---------------------------------------------------------------------------- PromQL

#: PromQL functions and aggregations. An identifier followed by "(" must be one of them;
#: any other identifier outside {...}, [...] and label lists is a metric name.
PROMQL_FUNCTIONS = frozenset(
    """abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max
    clamp_min count count_over_time count_values day_of_month day_of_week day_of_year
    days_in_month delta deriv exp floor group histogram_quantile holt_winters hour idelta
    increase irate label_join label_replace last_over_time ln log10 log2 max max_over_time
    min min_over_time minute month predict_linear present_over_time quantile
    quantile_over_time rate resets round scalar sgn sort sort_desc sqrt stddev
    stddev_over_time stdvar stdvar_over_time sum sum_over_time time timestamp topk vector
    year""".split()  # noqa: SIM905 (a word list reads better than 63 quoted strings)
)
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# Not after a word character, "." or "$": skips the exponent of 1e9, the unit of 1h and
# Grafana's $variables.
IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = LABEL_LIST.sub(" ", text)
    names = set()
    for name, call in IDENTIFIER.findall(text):
        if call:
            assert name in PROMQL_FUNCTIONS, f"unknown PromQL function {name!r} in {expr!r}"
        elif name not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route!~"/x/(b|c)"}[5m])))'
        " > 2.5 and on (instance) b unless ignoring(task) c{d='e'} offset 1h"
        ' + sum(d:e_total) without (f) * 1e9 - time() + x{y=~"$job"}[$__rate_interval]'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d:e_total", "x"}


# ---------------------------------------------------------------------------- sources


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def query_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows (which only title a group of panels)."""
    panels = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
        else:
            panels.append(panel)
    return panels


def dashboard_exprs(board: dict[str, Any]) -> dict[str, str]:
    """Where -> PromQL, for every target and every query variable."""
    exprs = {}
    for panel in query_panels(board):
        for target in panel["targets"]:
            exprs[f"dashboard panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert selector, f"variable {variable['name']}: {query!r}"
            exprs[f"dashboard variable {variable['name']}"] = selector[1]
    return exprs


def used_names() -> dict[str, list[str]]:
    """Metric name -> where the rules and the dashboard use it."""
    uses: dict[str, list[str]] = {}
    exprs = {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}
    exprs.update(dashboard_exprs(dashboard()))
    for where, expr in exprs.items():
        for name in metric_names(expr):
            uses.setdefault(name, []).append(where)
    return uses


# ---------------------------------------------------------------------------- promtool


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    why = (
        "promtool is not installed: it comes with the Debian package prometheus "
        "(`apt-get install prometheus`, or `make setup`)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{why}; in CI the monitoring tests must run")
    pytest.skip(why)


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> None:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", str(ALERTS))


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", str(ALERT_TESTS))


def test_every_alert_is_described_and_has_a_firing_case() -> None:
    rules = alert_rules()
    firing = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert sorted(set(names) - firing) == [], "alerts no unit test sees firing"
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_dashboard_is_importable_and_queries_prometheus() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"]
    assert board["title"]
    assert {"name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}.items() <= (
        board["__inputs"][0].items()
    )
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    ids += [inner["id"] for panel in board["panels"] for inner in panel.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    panels = query_panels(board)
    assert len(panels) >= 20
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == DATASOURCE, title
        assert panel["targets"], f"{title}: no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{title}: empty query"
            assert target.get("datasource", DATASOURCE) == DATASOURCE, title


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Each dashboard expression, with Grafana's variables filled in, goes through
    promtool's PromQL parser (as a unit test that expects no samples from no series)."""
    cases = []
    for expr in dashboard_exprs(dashboard()).values():
        promql = re.sub(r"\$__\w+", "5m", expr)  # $__rate_interval, $__range: durations
        promql = re.sub(r"\$\w+", ".*", promql)  # $job, $instance: regexes
        cases.append({"expr": promql, "eval_time": "0m", "exp_samples": []})
    tests = [{"interval": "1m", "input_series": [], "promql_expr_test": cases}]
    file = tmp_path / "dashboard.test.json"  # JSON is YAML
    file.write_text(json.dumps({"rule_files": [], "tests": tests}))
    run_promtool(promtool, "test", "rules", str(file), cwd=tmp_path)


# ---------------------------------------------------------------------------- the server

TYPE = re.compile(r"^# TYPE (\S+) (\w+)$", re.MULTILINE)
SAMPLE_NAME = re.compile(r"^([A-Za-z_:][\w:]*)[{ ]", re.MULTILINE)
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exported_names(text: str) -> tuple[set[str], set[str]]:
    """(every name the exposition declares or samples, the declared names without a
    sample yet). A family's ``# TYPE`` line gives the names its samples carry: a
    histogram's ``_bucket``, ``_sum`` and ``_count``; a counter's TYPE line already ends
    in ``_total`` in the text format."""
    sampled = set(SAMPLE_NAME.findall(text))
    declared = set()
    for family, kind in TYPE.findall(text):
        declared.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return sampled | declared, declared - sampled


@contextmanager
def served(settings: Settings, cwd: Path, workers: int, trust: ssl.SSLContext) -> Iterator[str]:
    """``ppserver serve`` with *workers* worker processes, over HTTPS; yield its URL."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    with (cwd / "ppserver.log").open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "ppserver"), "serve", "--port", str(port), "--workers", str(workers)],
            cwd=cwd, env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until_healthy(url, process, verify=trust)
            yield url
        finally:
            stop_process(process, timeout=30)


def scrape_after_workload(tmp_path: Path, workers: int) -> str:
    """``/metrics`` of a real ``ppserver serve`` (SQLite, local disk, HTTPS) after a
    workload that stores a content, registers a duplicate and has an upload refused."""
    cert, key = self_signed(tmp_path)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/putplace.db",
        storage_url=f"file://{tmp_path}/blobs",
        tls_cert_file=cert,
        tls_key_file=key,
        fsync=False,
    )
    created = run_ppserver(
        settings, "keys", "create", "--name", "m", "--scope", "write", "--json", cwd=tmp_path
    )
    api_key = json.loads(created.stdout)["api_key"]
    trust = ssl.create_default_context(cafile=str(cert))
    with (
        served(settings, tmp_path, workers, trust) as url,
        httpx.Client(base_url=url, headers={"X-API-Key": api_key}, verify=trust) as client,
    ):
        content_workload(client, b"monitored content" * 64, "/m")
        answer = client.get("/metrics")
        assert answer.status_code == 200, answer.text
        return answer.text


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """Workers -> what ``/metrics`` said: one process, and two workers (prometheus-client's
    multiprocess mode, which exports from other code than one process does)."""
    return {n: scrape_after_workload(tmp_path_factory.mktemp(f"w{n}"), n) for n in (1, 2)}


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_every_metric_used_is_exported(scrapes: dict[int, str], workers: int) -> None:
    exported, _ = exported_names(scrapes[workers])
    if workers > 1:
        # With several workers prometheus-client exports only what some worker has
        # recorded a sample of: a labelled family nothing has happened to yet (no store
        # error, say) is absent, where one process declares it with no samples.
        exported |= exported_names(scrapes[1])[1]
    missing = {
        name: where
        for name, where in sorted(used_names().items())
        if name not in exported and name not in CONDITIONAL
    }
    listing = "".join(f"\n  {name}: {'; '.join(where)}" for name, where in missing.items())
    assert not missing, f"used by the alerts or the dashboard, not exported:{listing}"


def test_conditional_names_are_few_and_real() -> None:
    """The allow-list stays short, names only what is used, and each of its PutPlace
    names is spelled as the server's source spells it (prometheus-client appends
    ``_total`` to a counter's name)."""
    assert len(CONDITIONAL) <= 4
    assert sorted(CONDITIONAL - set(used_names())) == []
    source = "\n".join(path.read_text() for path in SOURCE.rglob("*.py"))
    unknown = [
        name
        for name in sorted(CONDITIONAL - {"up"})
        if f'"{name.removesuffix("_total")}"' not in source
    ]
    assert unknown == [], "allowed as conditional, but no metric of that name in src/putplace"
