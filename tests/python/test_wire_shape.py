"""meterd's BatchMeterUsage bodies have the shape boto3 gives the same records: same members, same JSON types.

A real `meterd run --simulate --feed` (binary from $METERD_BIN, default <repo>/target/debug/meterd) meters a
license product and a legacy product into its embedded emulator, which runs with `strict_wire` on and logs every
request body it receives (`/_emulator/requests`). For each body meterd sent, boto3 builds the request for the same
records offline (botocore's own serializer; the `before-send` hook captures the body and aborts, so nothing goes on
the network), and the two are compared. The Rust SDK alone would add `"CustomerIdentifier": ""` to every license
record; boto3 never does.
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

import botocore.session
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def meterd_bin():
    path = pathlib.Path(
        os.environ.get("METERD_BIN", REPO / "target" / "debug" / "meterd")
    )
    if not path.exists():
        pytest.fail(
            f"meterd binary not found at {path}; build it (cargo build -p meterd) or set METERD_BIN"
        )
    return path


class Captured(Exception):
    """Carries the body botocore would have sent."""


def boto3_body(params):
    """The JSON body boto3 sends for BatchMeterUsage(**params), built offline."""
    client = botocore.session.get_session().create_client(
        "meteringmarketplace",
        region_name="us-east-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="test-secret",
        endpoint_url="http://127.0.0.1:9",
    )

    def capture(request, **_):
        raise Captured(request.body)

    client.meta.events.register("before-send", capture)
    with pytest.raises(Captured) as sent:
        client.batch_meter_usage(**params)
    return json.loads(sent.value.args[0])


def as_boto3_params(body):
    """What a boto3 user writes for the records in `body`: the record's meaning (identity, dimension, quantity,
    allocations), not the members a serializer added. An empty string is not an identity, so it is left out."""
    params = {k: v for k, v in body.items() if k != "UsageRecords"}
    records = []
    for r in body["UsageRecords"]:
        r = {k: v for k, v in r.items() if v != ""}
        r["Timestamp"] = dt.datetime.fromtimestamp(r["Timestamp"], dt.UTC)
        records.append(r)
    params["UsageRecords"] = records
    return params


def shape(v):
    """Member names and JSON types, recursively (int and float told apart)."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(x) for x in v]
    return type(v).__name__


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def sent_bodies(tmp_path_factory):
    """Every BatchMeterUsage request a real meterd sent, once it has sent license and legacy records."""
    work = tmp_path_factory.mktemp("wire")
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
[products.lic]
identity = "license"
dimensions = ["api_calls"]
[products.leg]
identity = "legacy"
product_code = "legacy-prod"
dimensions = ["users"]
"""
    )
    log = open(work / "meterd.log", "w")  # noqa: SIM115 (kept open by the child)
    # 600x: a simulated hour every 6 s, so hours end and are submitted well inside the 24 h (144 s) window.
    proc = subprocess.Popen(
        [
            str(meterd_bin()),
            "run",
            "--simulate",
            "--speed",
            "600",
            "--feed",
            "--config",
            str(cfg),
        ],
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
        emulator = dict(f.split("=", 1) for f in ready.split()[2:])["emulator"]
        deadline = time.monotonic() + 180  # a bound against hangs only
        while True:
            batches = [
                r
                for r in get_json(emulator + "/_emulator/requests")
                if r["operation"] == "BatchMeterUsage"
            ]
            kinds = {
                ("legacy" if "ProductCode" in json.loads(r["body"]) else "license")
                for r in batches
            }
            if kinds == {"license", "legacy"}:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"meterd sent {kinds or 'nothing'} in 180 s; see {work / 'meterd.log'}"
                )
            time.sleep(0.5)
        yield batches
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_the_strict_emulator_accepted_every_batch(sent_bodies):
    # strict_wire refuses a license record carrying any CustomerIdentifier member.
    refused = [(r["error"], r["body"]) for r in sent_bodies if r.get("error")]
    assert refused == []


def test_license_records_have_the_members_and_types_boto3_sends(sent_bodies):
    license_batches = [
        json.loads(r["body"])
        for r in sent_bodies
        if "ProductCode" not in json.loads(r["body"])
    ]
    assert license_batches
    for body in license_batches:
        for record in body["UsageRecords"]:
            assert "CustomerIdentifier" not in record, record
            assert {"CustomerAWSAccountId", "LicenseArn"} <= set(record), record
        want = boto3_body(as_boto3_params(body))
        assert shape(body) == shape(want)
        assert body == want


def test_legacy_records_keep_their_customer_identifier_as_boto3_sends_it(sent_bodies):
    legacy_batches = [
        json.loads(r["body"])
        for r in sent_bodies
        if "ProductCode" in json.loads(r["body"])
    ]
    assert legacy_batches
    for body in legacy_batches:
        assert body["ProductCode"] == "legacy-prod"
        for record in body["UsageRecords"]:
            assert record["CustomerIdentifier"] == "demo-customer", record
        want = boto3_body(as_boto3_params(body))
        assert shape(body) == shape(want)
        assert body == want


def test_the_boto3_reference_omits_an_identity_it_was_not_given():
    # The reference itself: boto3 sends only the members it was given (so the comparison above can tell).
    record = {
        "Timestamp": dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC),
        "CustomerAWSAccountId": "123456789012",
        "LicenseArn": "arn:aws:license-manager::123456789012:license:l-1",
        "Dimension": "api_calls",
        "Quantity": 3,
    }
    body = boto3_body({"UsageRecords": [record]})
    assert set(body["UsageRecords"][0]) == {
        "Timestamp",
        "CustomerAWSAccountId",
        "LicenseArn",
        "Dimension",
        "Quantity",
    }
    assert body["UsageRecords"][0]["Timestamp"] == 1_795_780_800
