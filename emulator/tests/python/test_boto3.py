"""Drives the emulator with boto3 (a second, independent SDK) over HTTP for the main paths.

The emulator runs as `meterd emulator --listen 127.0.0.1:0 --config FILE` (binary from $METERD_BIN, default
<repo>/target/debug/meterd). Nothing here is skipped: a missing boto3 or binary is a failure.
"""

import datetime as dt
import json
import os
import pathlib
import signal
import subprocess
import threading
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = pathlib.Path(__file__).resolve().parents[3]
PRODUCT = "prod-boto3"
LEGACY_PRODUCT = "legacy-boto3"
ACCOUNT = "123456789012"
LICENSE = "arn:aws:license-manager::123456789012:license:l-boto3000000000001"
OTHER_ACCOUNT = "210987654321"
OTHER_LICENSE = "arn:aws:license-manager::210987654321:license:l-boto3000000000002"

CONFIG = f"""
seed = 11
rate_limit_per_sec = 0

[[products]]
product_code = "{PRODUCT}"
dimensions = ["requests", "gb_stored"]

[[products]]
product_code = "{LEGACY_PRODUCT}"
dimensions = ["users"]

[[customers]]
product_code = "{PRODUCT}"
aws_account_id = "{ACCOUNT}"
license_arn = "{LICENSE}"

[[customers]]
product_code = "{LEGACY_PRODUCT}"
customer_identifier = "cust-legacy"

[[registration_tokens]]
token = "tok-1"
product_code = "{PRODUCT}"
aws_account_id = "{ACCOUNT}"
license_arn = "{LICENSE}"
agreement_id = "agmt-boto3"

[[registration_tokens]]
token = "tok-old"
product_code = "{PRODUCT}"
aws_account_id = "{ACCOUNT}"
license_arn = "{LICENSE}"
expired = true

[[registration_tokens]]
token = "tok-pending"
product_code = "{PRODUCT}"
aws_account_id = "{OTHER_ACCOUNT}"
license_arn = "{OTHER_LICENSE}"
subscribed = false
"""


def meterd_bin():
    path = pathlib.Path(os.environ.get("METERD_BIN", REPO / "target" / "debug" / "meterd"))
    if not path.exists():
        pytest.fail(f"meterd binary not found at {path}; build it (cargo build -p meterd) or set METERD_BIN")
    return path


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("emu") / "emulator.toml"
    cfg.write_text(CONFIG)
    stderr = open(cfg.parent / "stderr.log", "w+")
    proc = subprocess.Popen(
        [str(meterd_bin()), "emulator", "--listen", "127.0.0.1:0", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    first = {}
    reader = threading.Thread(target=lambda: first.update(line=proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=60)
    line = first.get("line", "")
    prefix = "meterd-emulator listening on "
    if not line.startswith(prefix):
        proc.kill()
        stderr.seek(0)
        pytest.fail(f"no announcement line (got {line!r}); stderr:\n{stderr.read()}")
    url = line[len(prefix):].strip()
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, "the emulator exits cleanly on SIGTERM"
    stderr.close()


def inspect(url, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


@pytest.fixture
def mm(emulator):
    inspect(emulator, "POST", "/_emulator/reset")
    return boto3.client(
        "meteringmarketplace",
        endpoint_url=emulator,
        region_name="us-east-1",
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="dummy",
        # One attempt per call, so each fault is seen as the SDK first sees it. (botocore's `max_attempts` counts
        # retries after the first attempt, so {"max_attempts": 1} would still send every request twice.)
        config=Config(retries={"total_max_attempts": 1}),
    )


# Records go to the previous hour and earlier, so a run that crosses an hour boundary keeps the same keys.
BASE_HOUR = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)


def hour_start(hours_ago=0):
    return BASE_HOUR - dt.timedelta(hours=hours_ago)


def record(dimension="requests", quantity=1, hours_ago=0, **extra):
    r = {
        "Timestamp": hour_start(hours_ago),
        "CustomerAWSAccountId": ACCOUNT,
        "LicenseArn": LICENSE,
        "Dimension": dimension,
        "Quantity": quantity,
    }
    r.update(extra)
    return r


def error_of(excinfo):
    err = excinfo.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_resolve_customer(mm):
    out = mm.resolve_customer(RegistrationToken="tok-1")
    assert out["CustomerAWSAccountId"] == ACCOUNT
    assert out["LicenseArn"] == LICENSE
    assert out["ProductCode"] == PRODUCT
    assert out["Metadata"]["AgreementId"] == "agmt-boto3"
    assert "CustomerIdentifier" not in out
    with pytest.raises(ClientError) as e:
        mm.resolve_customer(RegistrationToken="tok-old")
    assert error_of(e) == ("ExpiredTokenException", 400)
    with pytest.raises(mm.exceptions.InvalidTokenException):
        mm.resolve_customer(RegistrationToken="nope")


def test_batch_meter_usage_success_echo_and_request_id(mm, emulator):
    rec = record(
        quantity=5,
        UsageAllocations=[
            {"AllocatedUsageQuantity": 3, "Tags": [{"Key": "team", "Value": "a"}]},
            {"AllocatedUsageQuantity": 2},
        ],
    )
    out = mm.batch_meter_usage(UsageRecords=[rec])
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert out["ResponseMetadata"]["RequestId"]
    assert out["UnprocessedRecords"] == []
    (res,) = out["Results"]
    assert res["Status"] == "Success"
    assert res["MeteringRecordId"]
    echo = res["UsageRecord"]
    assert echo["Timestamp"] == rec["Timestamp"]
    assert echo["CustomerAWSAccountId"] == ACCOUNT and echo["LicenseArn"] == LICENSE
    assert echo["UsageAllocations"][0]["Tags"] == [{"Key": "team", "Value": "a"}]
    totals = inspect(emulator, "GET", "/_emulator/totals")
    assert [(t["dimension"], t["quantity"]) for t in totals] == [("requests", "5")]


def test_decimal_quantities_are_exact(mm, emulator):
    members = mm.meta.service_model.shape_for("UsageRecord").members
    assert "QuantityAsDecimal" in members, f"boto3 {boto3.__version__} predates QuantityAsDecimal; upgrade boto3"
    mm.batch_meter_usage(UsageRecords=[_decimal(record(hours_ago=1), "0.1")])
    out = mm.batch_meter_usage(UsageRecords=[_decimal(record(hours_ago=2), "0.2")])
    assert out["Results"][0]["UsageRecord"]["QuantityAsDecimal"] == "0.2"
    totals = inspect(emulator, "GET", "/_emulator/totals")
    assert totals[0]["quantity"] == "0.3"
    # Compared by value: 17 and "17.00" are the same record.
    first = mm.batch_meter_usage(UsageRecords=[record(quantity=17, hours_ago=3)])
    again = mm.batch_meter_usage(UsageRecords=[_decimal(record(hours_ago=3), "17.00")])
    assert again["Results"][0]["Status"] == "Success"
    assert again["Results"][0]["MeteringRecordId"] == first["Results"][0]["MeteringRecordId"]


def _decimal(rec, q):
    rec = dict(rec)
    del rec["Quantity"]
    rec["QuantityAsDecimal"] = q
    return rec


def test_first_write_wins(mm, emulator):
    first = mm.batch_meter_usage(UsageRecords=[record(quantity=4)])
    again = mm.batch_meter_usage(UsageRecords=[record(quantity=4)])
    assert again["Results"][0]["Status"] == "Success"
    assert again["Results"][0]["MeteringRecordId"] == first["Results"][0]["MeteringRecordId"]
    dup = mm.batch_meter_usage(UsageRecords=[record(quantity=5)])
    assert dup["Results"][0]["Status"] == "DuplicateRecord"
    assert "MeteringRecordId" not in dup["Results"][0]
    assert len(inspect(emulator, "GET", "/_emulator/ledger")) == 1
    counters = inspect(emulator, "GET", "/_emulator/counters")
    assert counters["duplicates"] == 1 and counters["records_replayed"] == 1


def test_not_subscribed_is_per_record(mm):
    pending = record(CustomerAWSAccountId=OTHER_ACCOUNT, LicenseArn=OTHER_LICENSE)
    out = mm.batch_meter_usage(UsageRecords=[record(), pending])
    assert [r["Status"] for r in out["Results"]] == ["Success", "CustomerNotSubscribed"]


def test_legacy_product_code_and_customer_identifier(mm):
    rec = {"Timestamp": hour_start(), "CustomerIdentifier": "cust-legacy", "Dimension": "users", "Quantity": 2}
    out = mm.batch_meter_usage(ProductCode=LEGACY_PRODUCT, UsageRecords=[rec])
    assert out["Results"][0]["Status"] == "Success"
    # Identity errors are the modelled exceptions, so boto3 raises its generated classes for them.
    with pytest.raises(mm.exceptions.InvalidProductCodeException):
        mm.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[record()])
    with pytest.raises(mm.exceptions.InvalidCustomerIdentifierException):
        mm.batch_meter_usage(ProductCode=LEGACY_PRODUCT, UsageRecords=[dict(rec, CustomerIdentifier="cust-nobody")])


def test_request_level_errors_refuse_the_whole_batch(mm, emulator):
    future = record(dimension="gb_stored")
    future["Timestamp"] = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    with pytest.raises(mm.exceptions.TimestampOutOfBoundsException):
        mm.batch_meter_usage(UsageRecords=[record(), future])
    with pytest.raises(mm.exceptions.TimestampOutOfBoundsException):
        mm.batch_meter_usage(UsageRecords=[record(hours_ago=25)])
    with pytest.raises(mm.exceptions.InvalidUsageDimensionException):
        mm.batch_meter_usage(UsageRecords=[record(dimension="Requests")])
    with pytest.raises(mm.exceptions.InvalidTagException):
        mm.batch_meter_usage(
            UsageRecords=[record(UsageAllocations=[{"AllocatedUsageQuantity": 1, "Tags": [{"Key": "k", "Value": "a>b"}]}])]
        )
    with pytest.raises(mm.exceptions.InvalidUsageAllocationsException):
        mm.batch_meter_usage(UsageRecords=[record(quantity=3, UsageAllocations=[{"AllocatedUsageQuantity": 2}])])
    with pytest.raises(ClientError) as e:
        mm.batch_meter_usage(UsageRecords=[record(dimension=d, hours_ago=h) for h in range(13) for d in ("requests", "gb_stored")])
    assert error_of(e) == ("ValidationException", 400)
    assert inspect(emulator, "GET", "/_emulator/ledger") == []


def test_faults_are_answered_as_aws_answers_them(mm, emulator):
    inspect(emulator, "PUT", "/_emulator/faults", {"throttle_probability": 1.0})
    with pytest.raises(ClientError) as e:
        mm.batch_meter_usage(UsageRecords=[record()])
    assert error_of(e) == ("ThrottlingException", 400)
    inspect(emulator, "PUT", "/_emulator/faults", {"internal_error_probability": 1.0})
    with pytest.raises(ClientError) as e:
        mm.batch_meter_usage(UsageRecords=[record()])
    assert error_of(e) == ("InternalServiceErrorException", 500)
    inspect(emulator, "PUT", "/_emulator/faults", {"unprocessed_probability": 1.0})
    out = mm.batch_meter_usage(UsageRecords=[record(), record(dimension="gb_stored")])
    assert out["Results"] == []
    assert [r["Dimension"] for r in out["UnprocessedRecords"]] == ["requests", "gb_stored"]
    inspect(emulator, "PUT", "/_emulator/faults", {})
    out = mm.batch_meter_usage(UsageRecords=out["UnprocessedRecords"])
    assert [r["Status"] for r in out["Results"]] == ["Success", "Success"]
    injected = inspect(emulator, "GET", "/_emulator/counters")["injected"]
    assert (injected["throttling"], injected["internal_errors"], injected["unprocessed_records"]) == (1, 1, 2)


def test_meter_usage(mm):
    ts = hour_start()
    first = mm.meter_usage(ProductCode=PRODUCT, Timestamp=ts, UsageDimension="requests", UsageQuantity=3)
    assert first["MeteringRecordId"]
    again = mm.meter_usage(ProductCode=PRODUCT, Timestamp=ts, UsageDimension="requests", UsageQuantity=3)
    assert again["MeteringRecordId"] == first["MeteringRecordId"]
    with pytest.raises(mm.exceptions.DuplicateRequestException):
        mm.meter_usage(ProductCode=PRODUCT, Timestamp=ts, UsageDimension="requests", UsageQuantity=4)
    # A ClientToken reused with other parameters.
    earlier = hour_start(1)
    mm.meter_usage(ProductCode=PRODUCT, Timestamp=earlier, UsageDimension="requests", UsageQuantity=9, ClientToken="t1")
    with pytest.raises(ClientError) as e:
        mm.meter_usage(ProductCode=PRODUCT, Timestamp=earlier, UsageDimension="requests", UsageQuantity=8, ClientToken="t1")
    assert error_of(e) == ("IdempotencyConflictException", 409)
    dec = mm.meter_usage(ProductCode=PRODUCT, Timestamp=ts, UsageDimension="gb_stored", UsageQuantityAsDecimal="1.5")
    assert dec["MeteringRecordId"]
