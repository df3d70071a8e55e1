"""Device comparison on one spec: like is compared only with like, and every figure is aggregated in SQL.

`compare(session, filters, baseline)`:
1. The filters (kind, model, dataset, batch size, dtype, or a spec hash) may match results of several specs
   (e.g. two step counts). Only one spec is compared: the one with the most results (ties: more devices,
   then the newest). The response names it, lists every candidate with its count, and says so in `note`,
   so a caller can ask again with `spec_hash=` for another one. The counts come from `spec_device_stats`
   (kept in step with `results` when a result is stored), never from a GROUP BY over every result.
2. For that spec, one row per device, from the raw trials pooled over every run of the device (GROUP BY and
   window functions in the database, never a loop over rows in Python): median `samples_per_s` and its 95%
   CI by the order-statistic method of `engine.stats` (the ranks come from the per-device trial count),
   the number of runs and trials.
3. The ratio of each median to the baseline's (`baseline=` a device id or name; default the slowest),
   the efficiency against the device's measured GEMM peak of the same dtype (`flops_per_step / batch_size`
   times the median samples/s, over the calibration chosen by `services.results.calibration`: a gemm run at
   sizes >= 1024 on the same software stack; the row names it, and an efficiency over 100% is flagged with
   the command that recalibrates), and the vendor's row in the seed's timeline.
4. The conditions of each device's runs: median samples per joule and power where a sensor measured them
   (else why not), the highest load average seen, and the software stack of its newest run. The answer
   lists the stack fields that differ between the devices (`stack_differences`) and warns when runs on a
   loaded host are compared with quiet ones (`load_warning`).
5. A device is hardware plus a stack: each row names its `hardware` (vendor and name, as the backend
   recorded them) and its `backend` and `library`; rows of one hardware measured through several stacks
   are listed side by side (`by_hardware`), and `hardware` in the answer groups them.
"""

from __future__ import annotations

import statistics
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, or_, select
from sqlalchemy.orm import Session

from engine.stats import CI_METHOD, median_ci_ranks
from services.devices.models import Device
from services.devices.service import backend_and_library, device_stack
from services.jobs.models import Job
from services.results.calibration import Calibration, calibration_for, load_of, recalibrate_command
from services.results.filters import ResultFilter
from services.results.history import stack_of
from services.results.models import NO_DEVICE, Result, SpecDeviceStats, Trial
from services.timeline.models import VendorEntry


class NoResults(LookupError):
    """No result matches the filters; the message says which filters."""


class UnknownBaseline(LookupError):
    """The baseline names no device of the comparison; the message lists the accepted ones."""


def spec_candidates(session: Session, filters: ResultFilter) -> list[dict[str, Any]]:
    """Specs matching the filters with throughput results (hash, results, devices, newest); best first.

    Read from `spec_device_stats` (one row per spec and device, kept in step with `results`), so the cost
    grows with specs x devices, not with results: with no filter every spec is a candidate. Order: more
    results, then more devices, then the newest result; the spec hash settles a complete tie.
    """
    stats = SpecDeviceStats
    results = func.sum(stats.result_count)
    devices = func.count(case((stats.device_id != NO_DEVICE, 1)))
    newest = func.max(stats.newest_at)
    query = (
        select(
            stats.spec_hash,
            func.max(stats.kind),
            func.max(stats.model_name),
            func.max(stats.dataset),
            func.max(stats.batch_size),
            func.max(stats.dtype),
            results,
            devices,
            newest,
        )
        .where(filters.as_sql_filter(stats))
        .group_by(stats.spec_hash)
        .order_by(results.desc(), devices.desc(), newest.desc(), stats.spec_hash)
    )
    keys = ("spec_hash", "kind", "model", "dataset", "batch_size", "dtype", "results", "devices", "newest")
    return [
        dict(zip(keys, (*row[:6], int(row[6]), int(row[7]), row[8]), strict=True))
        for row in session.execute(query)
    ]


def _pooled_trials(session: Session, spec_hash: str) -> dict[str, dict[str, Any]]:
    """Per device: runs, trials, median and 95% CI of the pooled trials, computed by the database."""
    counts = session.execute(
        select(Result.device_id, func.count(func.distinct(Result.id)), func.count(Trial.id))
        .join(Trial, Trial.result_id == Result.id)
        .where(Result.spec_hash == spec_hash, Result.device_id.is_not(None), Trial.samples_per_s.is_not(None))
        .group_by(Result.device_id)
    ).all()
    stats: dict[str, dict[str, Any]] = {}
    for device_id, runs, n in counts:
        assert device_id is not None  # filtered in the query
        lower, upper, coverage = median_ci_ranks(int(n))
        ranks = {"low": lower, "high": upper, "mid_a": (n + 1) // 2, "mid_b": (n + 2) // 2}
        stats[device_id] = {"runs": int(runs), "trials": int(n), "ranks": ranks, "ci95_coverage": coverage}
    if not stats:
        return stats
    ranked = (
        select(
            Result.device_id.label("device_id"),
            Trial.samples_per_s.label("value"),
            func.row_number()
            .over(partition_by=Result.device_id, order_by=(Trial.samples_per_s, Trial.id))
            .label("rn"),
        )
        .join(Trial, Trial.result_id == Result.id)
        .where(Result.spec_hash == spec_hash, Result.device_id.is_not(None), Trial.samples_per_s.is_not(None))
        .subquery("ranked")
    )
    conditions = [
        and_(ranked.c.device_id == device_id, ranked.c.rn.in_(sorted(set(item["ranks"].values()))))
        for device_id, item in stats.items()
    ]
    picked = session.execute(select(ranked.c.device_id, ranked.c.rn, ranked.c.value).where(or_(*conditions)))
    values: dict[tuple[str, int], float] = {(d, int(rn)): float(v) for d, rn, v in picked}
    for device_id, item in stats.items():
        ranks = item.pop("ranks")
        item["median"] = (values[(device_id, ranks["mid_a"])] + values[(device_id, ranks["mid_b"])]) / 2
        item["ci95"] = [values[(device_id, ranks["low"])], values[(device_id, ranks["high"])]]
    return stats


def _calibrations(
    session: Session, spec_hash: str, device_ids: list[str], dtype: str | None
) -> dict[str, tuple[Calibration | None, str | None]]:
    """Each device's calibration (or why it has none), on the stack of its newest result of this spec."""
    found = {}
    for device_id in device_ids:
        fingerprint = session.scalar(
            select(Result.fingerprint)
            .where(Result.spec_hash == spec_hash, Result.device_id == device_id)
            .order_by(Result.created_at.desc(), Result.id.desc())
            .limit(1)
        )
        found[device_id] = calibration_for(session, device_id, dtype, stack_of(fingerprint))
    return found


def _run_conditions(session: Session, spec_hash: str, device_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per device over its runs of this spec: median samples per joule (and power) where a sensor
    measured them, why not where none did, the highest load seen, and the stack of its newest run."""
    rows = session.execute(
        select(Result.device_id, Result.metrics, Result.fingerprint)
        .where(Result.spec_hash == spec_hash, Result.device_id.in_(device_ids))
        .order_by(Result.created_at, Result.id)
    ).all()
    found: dict[str, dict[str, Any]] = {}
    for device_id, metrics, fingerprint in rows:
        entry = found.setdefault(device_id, {"per_j": [], "power": [], "reasons": set(), "loads": []})
        energy = (metrics or {}).get("energy") or {}
        if isinstance(energy.get("samples_per_j"), int | float):
            entry["per_j"].append(float(energy["samples_per_j"]))
            entry["power"].append(float(energy.get("mean_power_w") or 0.0))
        elif energy.get("reason"):
            entry["reasons"].add(str(energy["reason"]))
        load = load_of(metrics)
        if load is not None:
            entry["loads"].append(load)
        entry["stack"] = stack_of(fingerprint)
        entry["backend"], entry["library"] = backend_and_library(fingerprint or {})
        entry["cpu_count"] = ((metrics or {}).get("conditions") or {}).get("cpu_count")
    summary = {}
    for device_id, entry in found.items():
        loads, cpu_count = entry["loads"], entry.get("cpu_count")
        summary[device_id] = {
            "samples_per_j": statistics.median(entry["per_j"]) if entry["per_j"] else None,
            "mean_power_w": statistics.median(entry["power"]) if entry["power"] else None,
            "energy_note": None if entry["per_j"] else "; ".join(sorted(entry["reasons"])) or "not measured",
            "load_max": max(loads) if loads else None,
            "loaded": bool(loads and cpu_count and max(loads) > cpu_count),
            "stack": entry["stack"],
            "backend": entry["backend"],
            "library": entry["library"],
        }
    return summary


def _differences(stacks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The stack fields whose values differ between the compared devices: field -> {device: value}."""
    fields = sorted({key for stack in stacks.values() for key in stack})
    return {
        key: {device: stack.get(key) for device, stack in stacks.items()}
        for key in fields
        if len({repr(stack.get(key)) for stack in stacks.values()}) > 1
    }


def _efficiency(
    device_id: str,
    dtype: str | None,
    achieved: float | None,
    calibration: Calibration | None,
    why: str | None,
) -> dict[str, Any]:
    """The efficiency figure, the calibration it used, and a flag when it cannot be right."""
    peak = calibration.peak_flops_per_s if calibration else None
    efficiency = achieved / peak if achieved and peak else None
    flag = None
    if efficiency is not None and efficiency > 1.0:
        flag = (
            f"{efficiency:.0%} of the calibrated peak is impossible: the calibration "
            f"(job {calibration.job_id if calibration else '?'}) was disturbed; recalibrate with "
            f"`{recalibrate_command(device_id, dtype)}`"
        )
    return {
        "gemm_peak_flops_per_s": peak,
        "efficiency": efficiency,
        "efficiency_flag": flag,
        "calibration": calibration.as_dict() if calibration else None,
        "calibration_note": why,
    }


def _flops_per_sample(session: Session, spec_hash: str) -> float | None:
    """FLOPs of one training sample (forward and backward) for this spec, as the engine counted them."""
    flops = cast(Result.metrics["flops_per_step"].as_string(), Float)
    row = session.execute(
        select(func.max(flops), func.max(Result.batch_size)).where(Result.spec_hash == spec_hash)
    ).one()
    if row[0] is None or not row[1]:
        return None
    return float(row[0]) / float(row[1])


def compare(session: Session, filters: ResultFilter, baseline: str | None = None) -> dict[str, Any]:
    """The comparison document of one spec (see the module docstring).

    Raises NoResults when nothing matches, UnknownBaseline when `baseline` names no compared device.
    """
    candidates = spec_candidates(session, filters)
    if not candidates:
        raise NoResults(f"no throughput results match {filters.describe()}")
    chosen = candidates[0]
    spec_hash = chosen["spec_hash"]
    note = None
    if len(candidates) > 1:
        others = ", ".join(f"{c['spec_hash']} ({c['results']} results)" for c in candidates[1:])
        note = (
            f"{len(candidates)} specs match {filters.describe()}; compared {spec_hash}, the one with the "
            f"most results ({chosen['results']}); the others: {others}; pass spec_hash= to compare another"
        )
    stats = _pooled_trials(session, spec_hash)
    devices = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(list(stats))))}
    timeline = {v.vendor.lower(): v for v in session.scalars(select(VendorEntry))}
    calibrations = _calibrations(session, spec_hash, list(stats), chosen["dtype"])
    conditions = _run_conditions(session, spec_hash, list(stats))
    flops_per_sample = _flops_per_sample(session, spec_hash)
    spec = session.scalar(
        select(Job.spec).join(Result, Result.job_id == Job.id).where(Result.spec_hash == spec_hash).limit(1)
    )

    if baseline is None:
        baseline_id = min(stats, key=lambda d: stats[d]["median"]) if stats else None
    else:
        matches = [d for d, dev in devices.items() if baseline in (d, dev.name)]
        if not matches:
            accepted = ", ".join(f"{d} ({dev.name})" for d, dev in devices.items())
            raise UnknownBaseline(
                f"baseline {baseline!r} is not a device of this comparison; accepted: {accepted}"
            )
        baseline_id = matches[0]
    base = stats[baseline_id]["median"] if baseline_id else None

    rows = []
    for device_id, item in sorted(stats.items(), key=lambda kv: -kv[1]["median"]):
        device = devices.get(device_id)
        # Device vendors are named as the seed names them: the backend's `vendor`, recorded at registration.
        vendor = device.vendor if device else None
        entry = timeline.get((vendor or "").lower())
        achieved = item["median"] * flops_per_sample if flops_per_sample else None
        condition = conditions.get(device_id, {})
        backend, library = (
            (condition["backend"], condition["library"])
            if "backend" in condition
            else device_stack(device)
            if device
            else (None, None)
        )
        rows.append(
            {
                "device_id": device_id,
                "device_name": device.name if device else None,
                "device_class": device.device_class if device else None,
                "vendor": vendor,
                # The hardware (the grouping key) and the stack that measured it, side by side.
                "hardware": hardware_key(device) if device else None,
                "backend": backend,
                "library": library,
                "samples_per_s": {
                    "median": item["median"],
                    "ci95": item["ci95"],
                    "ci95_coverage": item["ci95_coverage"],
                },
                "runs": item["runs"],
                "trials": item["trials"],
                "ratio": item["median"] / base if base else None,
                "achieved_flops_per_s": achieved,
                **_efficiency(device_id, chosen["dtype"], achieved, *calibrations[device_id]),
                **{
                    k: v
                    for k, v in conditions.get(device_id, {}).items()
                    if k not in ("stack", "backend", "library")
                },
                "stack": conditions.get(device_id, {}).get("stack"),
                "timeline": None
                if entry is None
                else {
                    "vendor": entry.vendor,
                    "platform": entry.platform,
                    "entered_from": entry.entered_from,
                    "entered_to": entry.entered_to,
                    "years": str(entry.entered_from)
                    if entry.entered_from == entry.entered_to
                    else f"{entry.entered_from}–{entry.entered_to}",
                    "entered": entry.entered,
                    "note": entry.note,
                    "source": entry.source,
                },
            }
        )
    rows, groups = by_hardware(rows)
    return {
        "spec_hash": spec_hash,
        "spec": spec,
        "metric": "samples_per_s",
        "ci_method": CI_METHOD + ", over the trials of every run of the device",
        "filters": filters.given(),
        "candidates": [{**c, "newest": c["newest"].isoformat() if c["newest"] else None} for c in candidates],
        "note": note,
        "baseline_device_id": baseline_id,
        "baseline_name": devices[baseline_id].name if baseline_id in devices else baseline_id,
        "rows": rows,
        "hardware": groups,
        "stack_differences": _differences({d: c["stack"] for d, c in conditions.items()}),
        "load_warning": _load_warning(rows),
    }


def hardware_key(device: Device) -> str:
    """What identifies a device's hardware across stacks: its vendor and name (the CPU model, the GPU
    name), as the backends record them."""
    return f"{device.vendor} {device.name}" if device.vendor not in ("", "unknown") else device.name


def by_hardware(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows with each hardware's stacks side by side (hardware in the order of its fastest stack,
    its stacks fastest first), and one group per hardware: its stacks and their medians."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:  # fastest first already
        groups.setdefault(str(row["hardware"] or row["device_id"]), []).append(row)
    summary = [
        {
            "hardware": key,
            "vendor": members[0]["vendor"],
            "stacks": [
                {
                    "device_id": row["device_id"],
                    "backend": row["backend"],
                    "library": row["library"],
                    "samples_per_s": row["samples_per_s"]["median"],
                }
                for row in members
            ],
        }
        for key, members in groups.items()
    ]
    return [row for members in groups.values() for row in members], summary


def _load_warning(rows: list[dict[str, Any]]) -> str | None:
    """A warning when quiet runs are compared with runs taken on a loaded host."""
    loaded = [r for r in rows if r.get("loaded")]
    if not loaded or len(loaded) == len(rows):
        return None
    names = ", ".join(str(r["device_name"] or r["device_id"]) for r in loaded)
    return (
        f"{names} ran with the host loaded beyond its cores (load average up to "
        f"{max(r['load_max'] for r in loaded):.1f}) while the others ran quiet: "
        "the ratio is not like for like"
    )
