"""Python SDK vs the stock grpcio stub, against the same running meterd agent.

    .venv/bin/pip install -r sdk-python/bench/requirements.txt ./sdk-python
    .venv/bin/python sdk-python/bench/bench.py

Starts `meterd run --simulate` ($METERD_BIN, default target/release/meterd) on a temporary data dir, unless
--target names a running agent. Measures calls/s and p50/p99 latency for single events with 1 and 32
concurrent callers (threads), and events/s for batches of 1,000, for both clients, and prints the ratios. The
caller's own cost of a call is its CPU time in this process (the agent and its fsync run in another one).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import meterd

REPO = Path(__file__).resolve().parents[2]


def start_agent(workdir: Path) -> tuple[subprocess.Popen, str]:
    cfg = workdir / "meterd.toml"
    cfg.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "{workdir / "data"}"\n'
        '[products.demo]\nidentity = "license"\ndimensions = ["api_calls", "storage_gb_hours"]\n'
    )
    binary = os.environ.get("METERD_BIN", str(REPO / "target" / "release" / "meterd"))
    proc = subprocess.Popen(
        [binary, "run", "--simulate", "--speed", "1", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "METERD_LOG": "warn"},
    )
    line = proc.stdout.readline()
    target = next(f.split("=", 1)[1] for f in line.split() if f.startswith("tcp="))
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, target


def stock_stub(target: str):
    """The client a user would otherwise write: grpcio + a stub generated from proto/ with grpcio-tools."""
    import grpc
    import grpc_tools
    from grpc_tools import protoc

    # Generated under another package path than `meterd/v1`, which would clash with the installed SDK.
    out = Path(tempfile.mkdtemp(prefix="meterd-stub-"))
    (out / "stockpb").mkdir()
    (out / "stockpb" / "metering.proto").write_text((REPO / "proto/meterd/v1/metering.proto").read_text())
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        ["protoc", f"-I{out}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}", "stockpb/metering.proto"]
    )
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    from stockpb import metering_pb2, metering_pb2_grpc  # type: ignore[import-not-found]

    channel = grpc.insecure_channel(target)
    return metering_pb2, metering_pb2_grpc.MeteringStub(channel)


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def run_callers(call, callers: int, seconds: float) -> dict:
    """`callers` threads call `call()` in a loop for `seconds`; returns calls/s and latency percentiles (ms)."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    stop = time.monotonic() + seconds

    def loop(mine: list[float]) -> None:
        while time.monotonic() < stop:
            t = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t)

    threads = [threading.Thread(target=loop, args=(latencies[i],)) for i in range(callers)]
    started = time.perf_counter()
    # The caller's own cost: CPU time of this process (every thread, the SDK's native ones included) per call.
    # The agent's work and its fsync happen in another process, so they are not in it; waiting costs no CPU.
    cpu_started = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu_started
    elapsed = time.perf_counter() - started
    all_lat = sorted(x for xs in latencies for x in xs)
    return {
        "rate": len(all_lat) / elapsed,
        "p50": percentile(all_lat, 0.50) * 1e3,
        "p99": percentile(all_lat, 0.99) * 1e3,
        "cpu": cpu / len(all_lat) * 1e3,
        "n": len(all_lat),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="a running agent (default: start one)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per scenario and client")
    args = ap.parse_args()

    proc = None
    if args.target:
        target = args.target
    else:
        proc, target = start_agent(Path(tempfile.mkdtemp(prefix="meterd-bench-")))
    try:
        pb, stub = stock_stub(target)
        sdk = meterd.Client(target)
        sdk.status()

        def sdk_one() -> None:
            sdk.record_usage(customer="bench", dimension="api_calls", quantity=1)

        def stock_one() -> None:
            event = pb.UsageEvent(
                idempotency_key=str(uuid.uuid4()),
                customer=pb.Customer(tenant_id="bench"),
                dimension="api_calls",
                quantity="1",
            )
            stub.RecordUsage(pb.RecordUsageRequest(event=event), timeout=10)

        batch = [{"customer": "bench", "dimension": "api_calls", "quantity": 1} for _ in range(1000)]

        def sdk_batch() -> None:
            results = sdk.record_usage_batch(batch)
            assert len(results) == 1000

        def stock_batch() -> None:
            events = [
                pb.UsageEvent(
                    idempotency_key=str(uuid.uuid4()),
                    customer=pb.Customer(tenant_id="bench"),
                    dimension="api_calls",
                    quantity="1",
                )
                for _ in range(1000)
            ]
            r = stub.RecordUsageBatch(pb.RecordUsageBatchRequest(events=events), timeout=30)
            assert len(r.results) == 1000

        for warm in (sdk_one, stock_one, sdk_batch, stock_batch):
            warm()

        rows = []
        for name, callers, sdk_call, stock_call, per_call in (
            ("single event, 1 caller", 1, sdk_one, stock_one, 1),
            ("single event, 32 callers", 32, sdk_one, stock_one, 1),
            ("batch of 1,000, 1 caller", 1, sdk_batch, stock_batch, 1000),
        ):
            s = run_callers(sdk_call, callers, args.seconds)
            g = run_callers(stock_call, callers, args.seconds)
            rows.append((name, per_call, s, g))

        unit = lambda per: "events/s" if per > 1 else "calls/s"  # noqa: E731
        print(f"\nmeterd Python SDK vs grpcio stub — agent {target}, {args.seconds:g} s per cell")
        print(f"{'scenario':<26} {'client':<8} {'rate':>14} {'p50 ms':>9} {'p99 ms':>9} {'caller CPU ms/call':>19}")
        for name, per, s, g in rows:
            for label, r in (("sdk", s), ("grpcio", g)):
                print(
                    f"{name:<26} {label:<8} {r['rate'] * per:>10.0f} {unit(per):<3} {r['p50']:>9.3f} {r['p99']:>9.3f}"
                    f" {r['cpu']:>19.3f}"
                )
            print(
                f"{'':<26} {'ratio':<8} {s['rate'] / g['rate']:>13.2f}x {g['p50'] / s['p50']:>8.2f}x "
                f"{g['p99'] / s['p99']:>8.2f}x   (sdk/grpcio throughput; grpcio/sdk latency: >1 = sdk better)"
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
