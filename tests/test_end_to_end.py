"""End-to-end: generated dirty lakehouse -> the whole pipeline -> Delta tables, report, MLflow store."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import shots
from deltalake import DeltaTable

from segspark.cli import main
from tests.conftest import REFERENCE_RUN_ID, ReferenceRun

PII_PATTERNS = [re.compile(rb"@example\.com"), re.compile(rb"Market Street"), re.compile(rb"\+1-555-\d{7}")]


def _table(root: Path, name: str) -> list[dict[str, Any]]:
    return pa.table(DeltaTable(str(root / "tables" / name)).to_pyarrow_table()).to_pylist()


@pytest.fixture(scope="module")
def lake(reference_run: ReferenceRun) -> dict[str, Any]:
    """The suite's reference run (600 dirty generated customers, ``segspark run`` with everything on):
    these tests rebuild its report, score and erase in its own folder, in-process (the other
    modules read a copy taken when it ended)."""
    root = reference_run.live
    # the run's own configuration (its hash is in the report): on the suite's existing session the
    # spark.* items change nothing (the session keeps the settings it was built with)
    return {"root": root, "data": reference_run.data, "args": reference_run.sets(root)}


@pytest.mark.slow
def test_every_quality_rule_fires_and_counts_reconcile(lake: dict[str, Any]) -> None:
    root = lake["root"]
    quarantine = _table(root, "quarantine")
    rules = {(q["source_table"], q["rule"]) for q in quarantine}
    tx_rules = {r for t, r in rules if t == "transactions"}
    assert {
        "missing_customer_id",
        "bad_timestamp",
        "future_timestamp",
        "too_early_timestamp",
        "bad_amount",
        "duplicate_line",
        "amount_outlier",
        "unknown_currency",
    } <= tx_rules
    assert any(t == "customers" for t, _ in rules)
    runs = _table(root, "runs")
    assert sorted((r["command"], r["status"]) for r in runs) == [
        ("report", "succeeded"),
        ("run", "succeeded"),
    ]
    runs = [r for r in runs if r["command"] == "run"]
    for item in runs[0]["inputs"]:
        assert item["rows_in"] == item["rows_clean"] + item["rows_quarantined"], item
    tx = next(i for i in runs[0]["inputs"] if i["name"] == "transactions")
    assert tx["rows_quarantined"] == sum(1 for q in quarantine if q["source_table"] == "transactions")


def _report_parts(root: Path) -> dict[str, Any]:
    run_dir = next(p for p in (root / "reports").iterdir() if p.name.startswith(REFERENCE_RUN_ID))
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    # the build time differs between two builds of the same report, and the appendix prints the
    # configuration of the command that builds it (the run's own is recorded by its hash only)
    body = md.split("### Effective configuration", 1)[0]
    lines = [ln for ln in body.splitlines() if " · generated " not in ln]
    lineage = body.split("### Lineage", 1)[1].split("\n## ", 1)[0]
    return {
        "text": lines,
        "sections": [ln for ln in lines if ln.startswith("#")],
        "charts": sorted(p.name for p in (run_dir / "figures").iterdir()),
        "lineage": lineage,
        "summary": sorted((r["metric"], r["value"]) for r in _table(root, "report_summary")),
    }


@pytest.mark.slow
def test_the_runs_row_records_what_the_job_sized_to_the_data(reference_run: ReferenceRun, spark: Any) -> None:
    """README "What the job sizes to the data": every choice is in the run's ``choices``."""
    (run,) = [r for r in _table(reference_run.out, "runs") if r["command"] == "run"]
    choices = dict(run["choices"])
    assert set(choices) == {
        "spark.jit",
        "spark.shuffle_partitions",
        "churn.fit",
        "clustering.sweep",
        "clustering.final_fit",
        "clv.model",
        "clv.spend_model",
        "refresh",
        "refresh.state_hash",
        "refresh.manifest_run",
        "refresh.orders_run",
        "refresh.orders_version",
        "refresh.outlier_bound",
        "refresh.data_date",
    }, choices
    # the reference run is the first of its lakehouse; it stands on its own manifest
    assert choices["refresh"] == "full: no earlier successful run in this lakehouse"
    assert choices["refresh.manifest_run"] == choices["refresh.orders_run"] == run["run_id"]
    # the last clean line's date: the default as_of_date of a later reuse (this run set its own)
    # (an order's time is its first line's: the last line is on or after the last order's day)
    last_order = max(r["order_ts"] for r in _table(reference_run.out, "orders")).date()
    assert dt.date.fromisoformat(choices["refresh.data_date"]) >= last_order
    assert choices["clv.spend_model"].startswith(
        ("gamma_gamma: clv.spend_model=auto", "gamma_gamma_by_frequency: ")
    )
    assert choices["spark.shuffle_partitions"] == "3"  # as the run set it (spark.shuffle_partitions=3)
    # the run's own process, on 600 customers' transactions (~0.2 MiB): HotSpot's client compiler only
    assert choices["spark.jit"] == "quick"
    # the churn window of 600 customers is under churn.max_train_rows: every customer, on the driver
    engine, rows = re.fullmatch(r"(\w+), (\d+) of (\d+) customers", choices["churn.fit"]).group(1, 2)  # type: ignore[union-attr]
    assert engine == "local" and 300 < int(rows) <= 600
    # clustering.k_max=6: k 2..6 for both algorithms, each fitted on the sample and two halves
    assert re.fullmatch(r"30 local fits on \d+ sampled customers \(k 2\.\.6\)", choices["clustering.sweep"])
    # k-means of the local sweep: fitted on the driver; another algorithm: MLlib's starts
    final = re.fullmatch(r"(\w+) k=\d on sample, (.+)", choices["clustering.final_fit"])
    assert final is not None, choices["clustering.final_fit"]
    if final.group(1) == "kmeans":
        assert final.group(2) == "best of 4 scikit-learn starts on the driver"
    else:
        assert re.fullmatch(r"[1-4] of 4 starts", final.group(2)), final.group(2)
    # a later reuse stands on this run's own runs row (inputs, counts), never its report's row of
    # the same run id (no inputs)
    from segspark.config import load_settings
    from segspark.io import Lakehouse
    from segspark.refresh import last_succeeded

    lake = Lakehouse(spark, load_settings(overrides=[f"output.path={reference_run.out}"]))
    source = last_succeeded(lake, run_id=run["run_id"])
    tx = next(i for i in run["inputs"] if i["name"] == "transactions")
    assert source is not None and source.inputs["transactions"][0] == tx["rows_in"] > 0


@pytest.mark.slow
def test_report_command_rebuilds_the_runs_report_from_tables(lake: dict[str, Any]) -> None:
    """``segspark report`` on a run's output finds the same sections, headline numbers, charts and
    lineage as the run's own report: everything it shows comes from the written tables."""
    root = lake["root"]
    before = _report_parts(root)
    assert len(before["charts"]) >= 10 and {"elbow.png", "indices_by_k.png"} <= set(before["charts"])
    assert "Config hash" in before["lineage"] and "| customer_segments | 0 |" in before["lineage"]
    sources = "\n".join(before["text"]).split("### Sources", 1)[1].split("###", 1)[0]
    assert "| transactions | " in sources and "| customers | " in sources  # input lineage from runs
    assert main(["report", *lake["args"]]) == 0
    after = _report_parts(root)
    for part in ("sections", "charts", "lineage", "summary", "text"):
        assert after[part] == before[part], part


@pytest.mark.slow
def test_segments_are_pseudonymous_one_row_per_customer_and_complete(lake: dict[str, Any]) -> None:
    rows = _table(lake["root"], "customer_segments")
    ids = [r["customer_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[0-9a-f]{64}", i) for i in ids)
    buyers = [r for r in rows if r["lifecycle_stage"] != "prospect"]
    assert buyers and all(r["rfm_segment"] for r in buyers)
    assert all(r["persona"] for r in buyers)
    assert all(r["clv"] is not None and r["p_alive"] is not None for r in buyers)
    prospects = [r for r in rows if r["lifecycle_stage"] == "prospect"]
    assert prospects and all(r["rfm_segment"] is None for r in prospects)


@pytest.mark.slow
def test_events_reach_the_features_through_ingests_engagement_summary(lake: dict[str, Any]) -> None:
    """Ingest summarizes the events per customer and releases them; features join that summary."""
    rows = _table(lake["root"], "customer_features")
    engaged = [r for r in rows if r["has_events"]]
    assert engaged and len(engaged) < len(rows)  # generated customers with and without events
    assert any(r["sessions_90d"] > 0 for r in engaged)
    assert all(r["days_since_last_visit"] is not None and r["days_since_last_visit"] >= 0 for r in engaged)
    kpis = {r["kpi"] for r in _table(lake["root"], "segment_kpis")}
    assert {"conversion_rate_90d", "sessions_per_customer_30d"} <= kpis


@pytest.mark.slow
def test_the_runs_report_breaks_customers_down_by_demographics(lake: dict[str, Any]) -> None:
    parts = _report_parts(lake["root"])
    assert "### Demographic segments" in parts["sections"]
    for label in ("age band", "country", "gender", "income band"):
        assert f"#### By {label}" in parts["sections"], label
    latest = lake["root"] / "reports" / "latest"
    # the real run's report for a person to look at (the report tests' fixture has no demographics)
    shots.screenshot(latest / "report.html", "e2e-report.png", height=12000)
    printed = "\n".join(shots.pdf_pages(latest / "report.pdf", "e2e-report-pdf", keep=20))
    assert "Demographic segments" in printed and "By age band" in printed


@pytest.mark.slow
def test_no_pii_in_any_output_table_report_or_mlflow_store(lake: dict[str, Any]) -> None:
    root = lake["root"]
    scanned = 0
    for path in [
        *(root / "tables").rglob("*"),
        *(root / "reports").rglob("*"),
        root / "mlflow.db",
        *root.glob("mlruns/**/*"),
        *root.glob("mlartifacts/**/*"),
    ]:
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            for pattern in PII_PATTERNS:
                assert not pattern.search(data), f"{pattern.pattern!r} found in {path}"
    assert scanned > 20
    # the planted PII really is in the input, so the scan can fail
    crm = b"".join(p.read_bytes() for p in (lake["data"] / "customers").rglob("*.parquet"))
    assert all(p.search(crm) for p in PII_PATTERNS)


@pytest.mark.slow
def test_the_registered_model_pins_what_loading_it_needs(reference_run: ReferenceRun) -> None:
    """The model's requirements are given, not inferred (inference reloads the model in a second
    process and JVM on every run): the packages loading a PipelineModel imports, at their versions."""
    from importlib import metadata

    artifacts = reference_run.out / "mlartifacts"
    found = [p for p in artifacts.rglob("requirements.txt") if "clustering_model" in p.parts]
    assert len(found) == 1, found
    pins = found[0].read_text(encoding="utf-8").split()
    assert pins == [f"{n}=={metadata.version(n)}" for n in ("mlflow", "numpy", "pandas", "pyspark", "scipy")]


@pytest.mark.slow
def test_score_reproduces_run_assignments_and_monitor_reports_drift(
    lake: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = lake["root"]
    fitted = {r["customer_id"]: (r["cluster_id"], r["persona"]) for r in _table(root, "customer_segments")}
    assert main(["score", "--run-id", "e2e-score", *lake["args"], "--set", "report.enabled=false"]) == 0
    scored = {r["customer_id"]: (r["cluster_id"], r["persona"]) for r in _table(root, "customer_segments")}
    assert scored == fitted
    # the score run records which registered model assigned the personas (its report names it)
    sweep = [r for r in _table(root, "clustering_sweep") if r["run_id"] == "e2e-score"]
    assert len(sweep) == 1 and sweep[0]["chosen"] and sweep[0]["engine"] == "registered"
    applied = r"registered model models:/\S+/\d+ \(alias \w+\), applied without refitting"
    assert re.fullmatch(applied, sweep[0]["reason"])
    profiles = [r for r in _table(root, "cluster_profiles") if r["run_id"] == "e2e-score"]
    assert {r["persona"] for r in profiles} >= {p for _, p in scored.values() if p}
    assert _score_model_moved(root, lake["args"], sweep[0]["reason"]) == scored
    assert main(["monitor", "--set", f"output.path={root}"]) == 0


def _score_model_moved(root: Path, args: list[str], applied: str) -> dict[str, Any]:
    """A score on unchanged inputs and settings is skipped, unless the model alias moved since: then
    it applies the version the alias points to now. Returns the last score's assignments."""
    from mlflow import MlflowClient

    def choices(run_id: str) -> dict[str, str]:
        return dict(next(r["choices"] for r in _table(root, "runs") if r["run_id"] == run_id))

    first = re.search(r"models:/\S+/\d+", applied)
    assert first is not None
    assert main(["score", "--run-id", "e2e-score-same", *args, "--set", "report.enabled=false"]) == 0
    assert choices("e2e-score-same")["refresh"].startswith("skip: inputs, settings and code as run e2e-score")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    name, version = first.group(0).removeprefix("models:/").split("/")
    old = client.get_model_version(name, version)
    new = client.create_model_version(name, old.source, run_id=old.run_id)
    client.set_registered_model_alias(name, "champion", new.version)
    assert main(["score", "--run-id", "e2e-score-moved", *args, "--set", "report.enabled=false"]) == 0
    moved = choices("e2e-score-moved")
    assert moved["refresh.model"] == f"models:/{name}/{new.version}" != first.group(0)
    now = f"models:/{name}/{new.version}"
    why = f"the registered model is now {now} (run e2e-score-same applied {first.group(0)})"
    assert moved["refresh"] == f"reuse: transactions as run e2e-score took them: its orders reused ({why})"
    sweep = [r for r in _table(root, "clustering_sweep") if r["run_id"] == "e2e-score-moved"]
    assert f"models:/{name}/{new.version} " in sweep[0]["reason"]
    return {r["customer_id"]: (r["cluster_id"], r["persona"]) for r in _table(root, "customer_segments")}


@pytest.mark.slow
def test_erase_removes_a_customer_everywhere(
    lake: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib
    import hmac

    root = lake["root"]
    key = os.environ["SEGSPARK_PSEUDO_KEY"].encode()
    pid = hmac.new(key, b"C000000003", hashlib.sha256).hexdigest()
    assert any(r["customer_id"] == pid for r in _table(root, "customer_segments"))
    assert main(["erase", "--customer-id", "C000000003", "--set", f"output.path={root}"]) == 0
    assert "customer_segments=1" in capsys.readouterr().out
    for name in ("customer_segments", "customer_features"):
        assert not any(r["customer_id"] == pid for r in _table(root, name))
