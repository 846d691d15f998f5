"""Benchmark the policy layer: single decisions (p50/p99) and batched evaluation (decisions/s).

Usage (from the repository root):

    nice .venv/bin/python bench/policy_bench.py [--policy DIR] [--single 3000] [--batch 250]
        [--batches 20] [--pin-cpu 0] [--compare-rev REV [--rounds 2]]

``--compare-rev REV`` measures before/after in one run: it extracts ``policies/`` and ``bench/``
of git revision REV into a temporary directory and runs that tree's benchmark and this one in
turn (``--rounds`` times each, alternating, each in a fresh process), then prints both side by
side (median over the rounds). Alternating spreads the drift of a shared machine's load over
both sides.

Targets (issue 5): a single decision with the default policy p99 < 1 ms; batched evaluation
(re-checking every open approval after a policy change) >= 10,000 decisions/s on one core.
The script also measures cedarpy's own batch call (one request per entity, 250 entities) as the
floor the evaluator is built on. Synthetic actions only: no data set is needed. Everything runs
in this one process and thread; ``--pin-cpu`` additionally pins it to one core.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import cedarpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import (
    DEFAULT_POLICY_DIR,
    ActionRequest,
    Approval,
    DecisionContext,
    ExposureItem,
    FxRate,
    FxTable,
    Outcome,
    Principal,
    action_hash,
    can_approve,
    evaluate,
    evaluate_many,
    load_policy_set,
    quorum_status,
)
from policies import entities as ent
from policies.evaluator import _prepare

AS_OF = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
FX = FxTable(
    base_currency="EUR",
    rates=(
        FxRate(currency="USD", rate=Decimal("0.92"), valid_from=date(2025, 6, 1)),
        FxRate(currency="GBP", rate=Decimal("1.17"), valid_from=date(2025, 6, 1)),
    ),
)
ARGS = {"invoice_id": "INV-1", "reason_code": "SHORTAGE"}


def ledger(n: int) -> tuple[ExposureItem, ...]:
    """A realistic exposure ledger: earlier actions on the case and the customer's day."""
    return tuple(
        ExposureItem(
            action_id=f"P{i}",
            action_type="issue_credit_note" if i % 2 else "refund",
            case_id="CASE-1" if i % 3 == 0 else f"CASE-{i}",
            customer_id="CUST-1",
            amount=Decimal(150 + 10 * i),
            currency="EUR" if i % 4 else "USD",
            at=AS_OF - timedelta(hours=i),
            status="executed",
        )
        for i in range(n)
    )


def credit(amount: str, i: int = 0, currency: str = "EUR") -> ActionRequest:
    return ActionRequest(
        action_id=f"ACT-{i}",
        action_type="issue_credit_note",
        arguments=ARGS,
        amount=Decimal(amount),
        currency=currency,
        case_id=f"CASE-{i % 40}",
        customer_id=f"CUST-{i % 25}",
        customer_tier="ABC"[i % 3],
        requested_by="u-agent",
    )


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] / 1000

    return {
        "p50_us": pick(0.50),
        "p90_us": pick(0.90),
        "p99_us": pick(0.99),
        "max_us": s[-1] / 1000,
    }


def time_each(fn: Callable[[], object], n: int, warmup: int = 100) -> dict[str, float]:
    """Wall-clock percentiles, plus the same for the thread's CPU time per call (``cpu_*``):
    on a shared machine the wall-clock tail is mostly time spent waiting for a core."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(n):
        c = time.thread_time_ns()
        t = time.perf_counter_ns()
        fn()
        wall.append(time.perf_counter_ns() - t)
        cpu.append(time.thread_time_ns() - c)
    return {**percentiles(wall), **{f"cpu_{k}": v for k, v in percentiles(cpu).items()}}


def throughput(fn: Callable[[], int], rounds: int) -> dict[str, float]:
    fn()  # warm-up
    rates, cpu_rates = [], []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        count = fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        rates.append(count / wall)
        cpu_rates.append(count / cpu if cpu > 0 else float("nan"))
    return {
        "median_per_s": statistics.median(rates),
        "best_per_s": max(rates),
        "median_per_cpu_s": statistics.median(cpu_rates),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--policy", default=str(DEFAULT_POLICY_DIR))
    ap.add_argument("--single", type=int, default=3000, help="timed single decisions per scenario")
    ap.add_argument("--batch", type=int, default=250, help="actions per evaluate_many call")
    ap.add_argument("--batches", type=int, default=20, help="timed evaluate_many calls")
    ap.add_argument("--ledger", type=int, default=12, help="exposure ledger rows per decision")
    ap.add_argument("--pin-cpu", type=int, default=None, help="pin the process to this CPU")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--compare-rev", help="also run the benchmark of this git revision")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs per side")
    opts = ap.parse_args()
    if opts.compare_rev:
        compare(opts)
        return
    if opts.pin_cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {opts.pin_cpu})

    policy = load_policy_set(opts.policy)
    rows = ledger(opts.ledger)
    ctx = DecisionContext(as_of=AS_OF, fx=FX, prior_actions=rows)
    results: dict[str, object] = {
        "policy": f"{policy.id} {policy.version} ({len(policy.rules)} rules)",
        "python": platform.python_version(),
        "cedarpy": getattr(cedarpy, "__version__", "4.x"),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "ledger_rows": opts.ledger,
    }

    # ---- single decisions, by outcome
    scenarios = {
        "auto_execute (credit 400 EUR)": credit("400"),
        "needs_approval (credit 12,400 EUR)": credit("12400", 1),
        "needs_approval + quorum (credit 60,000 USD)": credit("60000", 2, "USD"),
        "forbidden (write-off 150,000 EUR)": credit("150000", 3).model_copy(
            update={"action_type": "write_off", "arguments": {"reason_code": "X"}}
        ),
    }
    single: dict[str, dict[str, float]] = {}
    everything: list[Callable[[], object]] = []
    for label, action in scenarios.items():
        outcome = evaluate(action, ctx, policy).outcome.value

        def one(action: ActionRequest = action) -> object:
            return evaluate(action, ctx, policy)

        everything.append(one)
        single[f"{label} -> {outcome}"] = time_each(one, opts.single)
    turn = iter(range(10**9))
    single["all scenarios, interleaved"] = time_each(
        lambda: everything[next(turn) % len(everything)](), opts.single * 2
    )
    results["single_decision"] = single

    # ---- approval checks
    big = credit("60000", 2)
    h = action_hash(big, policy.version)
    fc = Principal(id="u-fc", roles=frozenset({"finance_controller"}))
    cfo = Principal(id="u-cfo", roles=frozenset({"cfo"}))
    approvals = [Approval(approver=p, action_hash=h, approved_at=AS_OF) for p in (fc, cfo)]
    results["can_approve"] = time_each(
        lambda: can_approve(cfo, big, ctx, approvals[:1], policy), opts.single
    )
    results["quorum_status (2 approvals)"] = time_each(
        lambda: quorum_status(big, ctx, approvals, policy), opts.single
    )

    # ---- batches: re-checking open approvals (all need approval) and a mixed queue
    open_approvals = [
        (credit(str(11000 + 37 * i), i), DecisionContext(as_of=AS_OF, fx=FX, prior_actions=rows))
        for i in range(opts.batch)
    ]
    mixed = [
        (
            credit(str(200 + 331 * i % 80000), i),
            DecisionContext(as_of=AS_OF, fx=FX, prior_actions=rows),
        )
        for i in range(opts.batch)
    ]
    outcomes = [d.outcome for d in evaluate_many(open_approvals, policy)]
    assert all(o == Outcome.needs_approval for o in outcomes), "bench data drifted"
    mix = {o.value: 0 for o in Outcome}
    for d in evaluate_many(mixed, policy):
        mix[d.outcome.value] += 1
    results["batch_recheck_open_approvals"] = throughput(
        lambda: len(evaluate_many(open_approvals, policy)), opts.batches
    )
    results["batch_mixed_queue"] = {
        **throughput(lambda: len(evaluate_many(mixed, policy)), opts.batches),
        "outcomes": mix,
    }

    # ---- cedarpy floor: its batch call, one auto_execute request per entity (250 entities)
    prepared = [_prepare(a, c, policy, str(i)) for i, (a, c) in enumerate(open_approvals)]
    entity_json = json.dumps([p.entity for p in prepared])
    requests = [
        ent.cedar_request(ent.uid("Service", ent.SERVICE_ID), "auto_execute", str(i))
        for i in range(len(prepared))
    ]

    def cedar_floor() -> int:
        handle = policy.base_handle.with_added_json_str(entity_json)
        cedarpy.is_authorized_batch(requests, policy.stage_policies["auto_execute"], handle)
        return len(requests)

    results["cedarpy_batch_floor (parse 250 entities + 250 auto_execute requests)"] = throughput(
        cedar_floor, opts.batches
    )

    # ---- the Cedar part of evaluate_many as it runs now: the same entities, and one combined
    # request per action (policies/combined.py), without any of our Python around it.
    combined = getattr(policy, "combined_policies", None)
    if combined:
        probe = ent.uid("User", ent.PROBE_USER_ID)
        asks = [ent.cedar_request(probe, "decide", str(i)) for i in range(len(prepared))]
        slices = [combined[(a.action_type, a.customer_tier)] for a, _ in open_approvals]
        groups: dict[int, tuple[object, list[dict[str, object]]]] = {}
        for ask, rules in zip(asks, slices, strict=True):
            groups.setdefault(id(rules), (rules, []))[1].append(ask)

        def cedar_share() -> int:
            handle = policy.combined_base_handle.with_added_json_str(entity_json)
            for rules, group in groups.values():
                cedarpy.is_authorized_batch(group, rules, handle)  # type: ignore[arg-type]
            return len(asks)

        results[CEDAR_SHARE] = throughput(cedar_share, opts.batches)
    results["loadavg_1m_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    if opts.json:
        print(json.dumps(results, indent=2, default=str))
        return
    print(
        f"policy {results['policy']}; Python {results['python']}; cpus {results['cpu_count']}; "
        f"load avg {results['loadavg_1m_at_start']:.2f} -> {results['loadavg_1m_at_end']:.2f}"
    )
    print(
        f"\nsingle decision (evaluate), {opts.single} runs per scenario, ledger {opts.ledger} rows"
    )
    print(f"  {'':62s} {'wall p50':>9s} {'wall p99':>9s} {'CPU p50':>9s} {'CPU p99':>9s}  (us)")
    table: list[tuple[str, dict[str, float]]] = [*single.items()]
    table += [(k, results[k]) for k in ("can_approve", "quorum_status (2 approvals)")]  # type: ignore[misc]
    for label, p in table:
        print(
            f"  {label:62s} {p['p50_us']:9.1f} {p['p99_us']:9.1f}"
            f" {p['cpu_p50_us']:9.1f} {p['cpu_p99_us']:9.1f}"
        )
    print(f"\nbatched evaluate_many, {opts.batch} actions per call, {opts.batches} calls:")
    for key in (
        "batch_recheck_open_approvals",
        "batch_mixed_queue",
        "cedarpy_batch_floor (parse 250 entities + 250 auto_execute requests)",
        CEDAR_SHARE,
    ):
        if key not in results:
            continue
        r: Any = results[key]
        extra = f"  outcomes {r['outcomes']}" if "outcomes" in r else ""
        print(
            f"  {key:70s} {r['median_per_s']:8.0f}/s median, {r['best_per_s']:8.0f}/s best, "
            f"{r['median_per_cpu_s']:8.0f}/CPU-s{extra}"
        )
    gc.collect()


CEDAR_SHARE = "Cedar share of evaluate_many (parse + 1 combined request per action)"
BATCH_KEYS = (
    "batch_recheck_open_approvals",
    "batch_mixed_queue",
    "cedarpy_batch_floor (parse 250 entities + 250 auto_execute requests)",
    CEDAR_SHARE,
)


def compare(opts: argparse.Namespace) -> None:
    """Run REV's benchmark and this one alternately in fresh processes; print both."""
    root = Path(__file__).resolve().parents[1]
    passthrough = [
        *("--policy", opts.policy, "--single", str(opts.single), "--batch", str(opts.batch)),
        *("--batches", str(opts.batches), "--ledger", str(opts.ledger), "--json"),
    ]
    if opts.pin_cpu is not None:
        passthrough += ["--pin-cpu", str(opts.pin_cpu)]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", opts.compare_rev, "policies", "bench"],
            cwd=root,
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        sides = {
            f"before ({opts.compare_rev})": Path(tmp) / "bench" / "policy_bench.py",
            "after (this tree)": Path(__file__).resolve(),
        }
        runs: dict[str, list[dict[str, object]]] = {side: [] for side in sides}
        for _ in range(opts.rounds):
            for side, script in sides.items():
                out = subprocess.run(
                    [sys.executable, str(script), *passthrough],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=script.parents[1],
                ).stdout
                runs[side].append(json.loads(out))

    def median(side: str, *path: str) -> float | None:
        values = []
        for run in runs[side]:
            node: object = run
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, int | float):
                values.append(float(node))
        return statistics.median(values) if values else None

    first = runs["after (this tree)"][0]
    print(
        f"policy {first['policy']}; Python {first['python']}; {opts.rounds} alternating rounds "
        f"per side; load avg at the start of each run: "
        + ", ".join(
            f"{side.split()[0]} {[r['loadavg_1m_at_start'] for r in rs]}"
            for side, rs in runs.items()
        )
    )
    names = list(sides)
    print(f"\nsingle decision, us (median of the rounds): {' | '.join(names)}")
    print(f"  {'':62s} {'wall p50':>17s} {'wall p99':>17s} {'CPU p50':>17s} {'CPU p99':>17s}")
    labels = list(first["single_decision"])  # type: ignore[call-overload]
    rows = [("single_decision", label) for label in labels]
    rows += [("can_approve",), ("quorum_status (2 approvals)",)]  # type: ignore[list-item]
    for row in rows:
        cells = []
        for metric in ("p50_us", "p99_us", "cpu_p50_us", "cpu_p99_us"):
            a, b = (median(side, *row, metric) for side in names)
            cells.append(f"{a or float('nan'):8.0f} {b or float('nan'):8.0f}")
        print(f"  {row[-1]:62s} {' '.join(cells)}")
    print(
        f"\nbatched evaluate_many, {opts.batch} actions per call, per second: {' | '.join(names)}"
    )
    print(f"  {'':70s} {'wall (median)':>17s} {'per CPU-second':>17s}")
    for key in BATCH_KEYS:
        cells = []
        for metric in ("median_per_s", "median_per_cpu_s"):
            a, b = (median(side, key, metric) for side in names)
            cells.append(
                f"{'-' if a is None else f'{a:.0f}':>8s} {'-' if b is None else f'{b:.0f}':>8s}"
            )
        print(f"  {key:70s} {' '.join(cells)}")


if __name__ == "__main__":
    main()
