"""A deployment-mode product (`identity = "deployment"`: meterd on the buyer's host, AMI or container product),
read back with boto3: what meterd billed through MeterUsage is what AWS (the emulator) holds.

A real `meterd run --simulate --speed 600 --feed` (binary from $METERD_BIN, default <repo>/target/debug/meterd)
meters product `ami` into its embedded emulator: an hour every 6 s, records within MeterUsage's 6 h window (36 s).
Then boto3, pointed at that emulator as at AWS, asks for each billed record again: the same MeteringRecordId comes
back for the same quantity (the hour is billed once, first write wins), another quantity is a
DuplicateRequestException, a DryRun meters nothing. Each billed record matches a row of `meterd report` (same
hour, dimension, whole units and MeteringRecordId).
"""

import datetime as dt
import json
import os
import pathlib
import queue
import signal
import subprocess
import threading
import time
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = pathlib.Path(__file__).resolve().parents[2]
PRODUCT_CODE = "ami-boto3-code"


def meterd_bin():
    path = pathlib.Path(
        os.environ.get("METERD_BIN", REPO / "target" / "debug" / "meterd")
    )
    if not path.exists():
        pytest.fail(
            f"meterd binary not found at {path}; build it (cargo build -p meterd) or set METERD_BIN"
        )
    return path


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """(emulator URL, meterd gRPC target, billed MeterUsage ledger entries) once a few hours are billed."""
    work = tmp_path_factory.mktemp("deployment")
    cfg = work / "meterd.toml"
    cfg.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "{work / "data"}"
[pipeline]
seal_grace = "1m"
tick = "100ms"
[products.ami]
identity = "deployment"
product_code = "{PRODUCT_CODE}"
dimensions = ["vcpu_hours", "gb_stored"]
"""
    )
    log = open(work / "meterd.log", "w")  # noqa: SIM115 (kept open by the child)
    proc = subprocess.Popen(
        [str(meterd_bin()), "run", "--simulate", "--speed", "600", "--feed"]
        + ["--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "METERD_LOG": "warn"},
    )
    lines = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in proc.stdout], daemon=True
    ).start()
    try:
        try:
            ready = lines.get(timeout=60)
        except queue.Empty:
            pytest.fail(f"meterd did not get ready; see {work / 'meterd.log'}")
        assert ready.startswith("meterd ready"), ready
        fields = dict(f.split("=", 1) for f in ready.split()[2:])
        emulator, target = fields["emulator"], fields["tcp"]
        deadline = time.monotonic() + 180  # a bound against hangs only
        while True:
            billed = [
                e
                for e in get_json(emulator + "/_emulator/ledger")
                if e["product_code"] == PRODUCT_CODE
            ]
            if len({e["dimension"] for e in billed}) == 2 and len(billed) >= 3:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"meterd billed {billed} in 180 s; see {work / 'meterd.log'}"
                )
            time.sleep(0.5)
        yield emulator, target, billed
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def metering(url):
    return boto3.client(
        "meteringmarketplace",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="test-secret",
        # meterd shares the emulator's 10 calls/s: let botocore retry a throttled call.
        config=Config(retries={"mode": "standard", "total_max_attempts": 8}),
    )


def allocations(entry):
    out = []
    for a in entry["allocations"]:
        alloc = {"AllocatedUsageQuantity": int(a["quantity"])}
        if a["tags"]:
            alloc["Tags"] = [{"Key": t["key"], "Value": t["value"]} for t in a["tags"]]
        out.append(alloc)
    return out


def test_billed_records_are_meter_usage_without_a_customer(running):
    _, _, billed = running
    for e in billed:
        assert e["operation"] == "MeterUsage"
        assert e["customer_aws_account_id"] is None and e["license_arn"] is None
        # Stamped at the hour start: one record per dimension and hour.
        assert e["timestamp"] == e["hour_start"] and e["hour_start"] % 3600 == 0
    keys = [(e["dimension"], e["hour_start"]) for e in billed]
    assert len(keys) == len(set(keys))


def test_boto3_reads_back_each_billed_record(running):
    emulator, _, billed = running
    mm = metering(emulator)
    for e in billed:
        params = {
            "ProductCode": PRODUCT_CODE,
            "Timestamp": dt.datetime.fromtimestamp(e["hour_start"], dt.UTC),
            "UsageDimension": e["dimension"],
            "UsageQuantity": int(e["quantity"]),
        }
        if e["allocations"]:
            params["UsageAllocations"] = allocations(e)
        # The same quantity for the same hour: answered with the id of what meterd billed, not billed again.
        assert mm.meter_usage(**params)["MeteringRecordId"] == e["metering_record_id"]
        # Another quantity for that hour: AWS keeps the first.
        other = {**params, "UsageQuantity": int(e["quantity"]) + 1}
        other.pop("UsageAllocations", None)
        with pytest.raises(mm.exceptions.DuplicateRequestException):
            mm.meter_usage(**other)
        # A DryRun checks without metering.
        with pytest.raises(ClientError) as dry:
            mm.meter_usage(**{**params, "DryRun": True})
        assert dry.value.response["Error"]["Code"] == "DryRunOperation"
    # None of these calls billed anything: each hour and dimension still has exactly meterd's one record.
    # (meterd keeps billing later hours meanwhile, so only the keys read back are compared.)
    after = {}
    for x in get_json(emulator + "/_emulator/ledger"):
        if x["product_code"] == PRODUCT_CODE:
            after.setdefault((x["dimension"], x["hour_start"]), []).append(
                (x["metering_record_id"], x["quantity"])
            )
    for e in billed:
        assert after[(e["dimension"], e["hour_start"])] == [
            (e["metering_record_id"], e["quantity"])
        ]


def test_meterd_report_matches_what_was_billed(running):
    _, target, billed = running
    deadline = time.monotonic() + 60  # meterd records an answer just after the emulator bills it
    while True:
        out = subprocess.run(
            [str(meterd_bin()), "report", "--target", target, "--rows", "--format", "json"],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        rows = {
            (r["dimension"], r["hour"] // 1000): r
            for r in lines
            if r["type"] == "row" and r["product"] == "ami" and r["state"] == "accepted"
        }
        missing = [
            e for e in billed if (e["dimension"], e["hour_start"]) not in rows
        ]
        if not missing:
            break
        assert time.monotonic() < deadline, f"not in the report: {missing}"
        time.sleep(0.5)
    for e in billed:
        row = rows[(e["dimension"], e["hour_start"])]
        assert row["customer"] == "deployment"
        assert row["accepted"] == int(e["quantity"])
        assert row["metering_record_id"] == e["metering_record_id"]
