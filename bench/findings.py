"""The findings of the report: statements computed from the measured numbers.

Each statement restates numbers of the run, or derives one from them with arithmetic
that the statement shows. None of them names a cause that the run did not measure.
"""

from __future__ import annotations

from typing import Any

from bench.results import (
    BATCH_TARGET,
    P99_TARGET_MS,
    PROFILED_LOADS,
    SINGLE_TARGET,
    best_batch,
    best_ceiling,
    ceiling_at,
    format_gib,
    format_mib,
    format_number,
    highest_single,
    sum_field,
    target_verdict,
)


def findings(results: dict[str, Any]) -> list[str]:
    """Return the Findings section: statements computed from the measured numbers, without guessed causes."""
    notes = _throughput_notes(results)
    notes += _cpu_notes(results)
    notes += _profile_notes(results)
    notes += _baseline_notes(results)
    notes += _memory_notes(results)

    lines = ["## Findings", "", "Computed from the numbers above.", ""]
    return lines + [f"- {note}" for note in notes] + [""]


def _throughput_notes(results: dict[str, Any]) -> list[str]:
    notes = []
    best = best_ceiling(results)
    single = highest_single(results.get("pipeline"))
    batch = best_batch(results)

    for row in (single, batch):
        if row and row.get("items_without_sentiment"):
            notes.append(
                f"In the {row['kind']} measurement at concurrency {row['concurrency']}, {row['items_without_sentiment']} "
                f"of {row['items_accepted']} accepted items were stored without sentiment, because the model failed or "
                "timed out. items/s includes them, so the rate of scored items is lower."
            )
    if not best:
        return notes

    if single:
        ratio = single["items_per_s"] / best["median_items_per_s"]
        concurrency = single["concurrency"]
        needed_rps = concurrency / (P99_TARGET_MS / 1000)
        notes.append(
            f"Single submissions at concurrency {concurrency} reached {format_number(single['items_per_s'])} items/s, "
            f"{ratio:.0%} of the bare model's {format_number(best['median_items_per_s'])} items/s. The target of "
            f"{SINGLE_TARGET:.0%} is {target_verdict(ratio, SINGLE_TARGET)}."
        )
        limit = (results.get("pipeline") or {}).get("submit_max_in_flight")
        if limit and limit < concurrency:
            notes.append(
                f"The gateway passed at most {limit} submissions to the graph at once "
                f"(`FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT`) and answered the others of the {concurrency} clients with an "
                f"immediate 503. Little's law then gives the mean latency of an accepted request as {limit} / "
                f"throughput = {1000 * limit / single['items_per_s']:,.0f} ms at the measured rate (measured mean: "
                f"{format_number(single['mean_ms'], 0)} ms). Without the limit, {concurrency} requests in flight "
                f"would need more than {needed_rps:.0f} requests/s for a mean under {P99_TARGET_MS:.0f} ms, "
                f"{needed_rps / best['median_items_per_s']:.1f}× the bare model's best rate on this machine."
            )
        else:
            notes.append(
                f"With {concurrency} requests always in flight, Little's law gives the mean latency as {concurrency} / "
                f"throughput = {1000 * concurrency / single['items_per_s']:,.0f} ms at the measured rate (measured "
                f"mean: {format_number(single['mean_ms'], 0)} ms). A mean under {P99_TARGET_MS:.0f} ms at this "
                f"concurrency needs more than {needed_rps:.0f} requests/s, "
                f"{needed_rps / best['median_items_per_s']:.1f}× the bare model's best rate on this machine."
            )

    for row in (results.get("pipeline") or {}).get("shedding") or []:
        if not single:
            break
        rejected = row["errors"].get("503", 0)
        notes.append(
            f"With the gateway passing at most {row['submit_max_in_flight']} submissions at once, the same "
            f"{row['concurrency']} clients got {format_number(row['items_per_s'])} items/s stored (without that limit: "
            f"{format_number(single['items_per_s'])}) and a p99 of {format_number(row['p99_ms'], 0)} ms on accepted tries "
            f"(without: {format_number(single['p99_ms'], 0)} ms). {rejected} tries got a 503, and from a submission's "
            f"first try to its success the p99 was {format_number(row.get('p99_with_retries_ms'), 0)} ms "
            f"(without: {format_number(single.get('p99_with_retries_ms'), 0)} ms)."
        )

    threads = results["service_torch_threads"]
    enrichment = results["serve_settings"]["user_configs"].get("Enrichment", {})
    collected = int(enrichment.get("max_batch_size", 16))
    model_batch = int(enrichment.get("model_batch_size", collected))
    workers = int(results.get("service_model_workers", 1))
    sorted_rate = ceiling_at(results, threads, "sorted", model_batch, workers)
    if sorted_rate:
        notes.append(
            f"The Enrichment replica collects up to {collected} calls, sorts their texts by length and scores them in "
            f"forward passes of {model_batch} on {threads} torch thread(s), {workers} pass(es) at once. The bare model scored "
            f"{format_number(sorted_rate['median_items_per_s'])} items/s that way, "
            f"{sorted_rate['median_items_per_s'] / best['median_items_per_s']:.0%} of its best rate; a replica's "
            "batch holds fewer texts to sort than the bare model's list, so its passes carry somewhat more padding."
        )
    arrival = ceiling_at(results, threads, "arrival", model_batch)
    if arrival:
        notes.append(
            f"Passes of {model_batch} texts in arrival order, without sorting, scored "
            f"{format_number(arrival['median_items_per_s'])} items/s: the tokenizer pads every text of a pass to the "
            "longest one in it."
        )

    if batch:
        ratio = batch["items_per_s"] / best["median_items_per_s"]
        notes.append(
            f"Batch submissions reached at best {format_number(batch['items_per_s'])} items/s (batches of "
            f"{batch['batch_size']} at concurrency {batch['concurrency']}), {ratio:.0%} of the bare model. The target "
            f"of {BATCH_TARGET:.0%} is {target_verdict(ratio, BATCH_TARGET)}."
        )
    return notes


def _cpu_notes(results: dict[str, Any]) -> list[str]:
    single = highest_single(results.get("pipeline"))
    cpu = (results.get("pipeline") or {}).get("cpu_by_role") or {}
    stack_cores = sum(cores for role, cores in cpu.items() if not role.startswith("load generator"))
    if not single or not stack_cores:
        return []

    enrichment = cpu.get("replica Enrichment", 0.0)
    client = cpu.get("load generator (this process)", 0.0)
    busiest = ", ".join(f"{role} {cores:.2f}" for role, cores in list(cpu.items())[:6])
    notes = [
        f"At concurrency {single['concurrency']} the service's processes used {stack_cores:.2f} cores, the load "
        f"generator {client:.2f} and other processes {single['other_cores']:.2f}, of {results['machine']['nproc']} "
        f"cores. By role: {busiest}. The Enrichment replicas, which run the model, used {enrichment:.2f} cores, "
        f"{enrichment / stack_cores:.0%} of the service's CPU time."
    ]

    reference = ceiling_at(results, results["service_torch_threads"])
    if reference and enrichment:
        notes.append(
            f"The bare model with the service's {reference['threads']} torch thread(s) scored "
            f"{format_number(reference['median_items_per_s'])} items/s, {_per_core_text(reference)}. At that rate per "
            f"core, the {enrichment:.2f} cores of the Enrichment replicas would score about "
            f"{format_number(_per_core_rate(reference) * enrichment)} items/s, and the service stored "
            f"{format_number(single['items_per_s'])} items/s. This is an estimate: it assumes that the model runs at "
            "the same rate per core in the replica as in the bare process."
        )
    return notes + _batch_cpu_notes(results)


def _per_core_rate(row: dict[str, Any]) -> float:
    """Return a bare-model row's texts per CPU second, or for older runs its rate over threads times passes."""
    return row.get("median_items_per_cpu_s") or row["median_items_per_s"] / (row["threads"] * row.get("workers", 1))


def _per_core_text(row: dict[str, Any]) -> str:
    """Return the words that state a bare-model row's rate per core and the cores it used."""
    if row.get("median_items_per_cpu_s"):
        return f"{format_number(row['median_items_per_cpu_s'])} per CPU second on {row['median_cores']:.2f} cores"
    return f"on up to {row['threads'] * row.get('workers', 1)} core(s)"


def _batch_cpu_notes(results: dict[str, Any]) -> list[str]:
    """Return notes on the cores each role used during the best batch setting, and what the model's share would score."""
    batch = best_batch(results)
    cpu = (batch or {}).get("cpu_by_role") or {}
    stack_cores = sum(cores for role, cores in cpu.items() if not role.startswith("load generator"))
    if not batch or not stack_cores:
        return []

    enrichment = cpu.get("replica Enrichment", 0.0)
    others = [(role, cores) for role, cores in cpu.items() if role != "replica Enrichment" and not role.startswith("load generator")]
    busiest = ", ".join(f"{role} {cores:.2f}" for role, cores in others[:6])
    notes = [
        f"During batches of {batch['batch_size']} at concurrency {batch['concurrency']} the service's processes used "
        f"{stack_cores:.2f} cores and other processes {batch['other_cores']:.2f}, of {results['machine']['nproc']} cores. "
        f"The Enrichment replicas used {enrichment:.2f} cores; the other roles of the service "
        f"{stack_cores - enrichment:.2f}: {busiest}."
    ]

    threads = results["service_torch_threads"]
    workers = int(results.get("service_model_workers", 1))
    enrichment_config = results["serve_settings"]["user_configs"].get("Enrichment", {})
    model_batch = int(enrichment_config.get("model_batch_size", enrichment_config.get("max_batch_size", 16)))
    reference = ceiling_at(results, threads, "sorted", model_batch, workers)
    if reference and enrichment:
        notes.append(
            f"The bare model scored {format_number(reference['median_items_per_s'])} items/s with the replica's {workers} "
            f"pass(es) of {threads} torch thread(s), {_per_core_text(reference)}. At that rate per core, the "
            f"{enrichment:.2f} cores of the Enrichment replicas would score about "
            f"{format_number(_per_core_rate(reference) * enrichment)} items/s, and the service stored "
            f"{format_number(batch['items_per_s'])} items/s. The other roles' {stack_cores - enrichment:.2f} cores are "
            f"{(stack_cores - enrichment) / results['machine']['nproc']:.0%} of the machine. This is an estimate: it "
            "assumes that the model runs at the same rate per core in the replica as in the bare process."
        )
    return notes


def _profile_notes(results: dict[str, Any]) -> list[str]:
    notes = []
    for section, key, name in PROFILED_LOADS:
        for process in ((results.get(section) or {}).get(key) or {}).get("processes") or []:
            recorded = process.get("recorded_cores") or 0.0
            if recorded < 0.01:
                continue
            top = list(process["cores_by_group"].items())[:3]
            shares = ", ".join(f"{group} {cores:.2f} ({cores / recorded:.0%})" for group, cores in top)
            frame, frame_cores = process["cores_by_frame"][0] if process["cores_by_frame"] else ("–", 0.0)
            notes.append(
                f"Profile of the {name}: {process['role']} used {recorded:.2f} cores while recorded: {shares}. "
                f"Its busiest frame was `{frame}` with {frame_cores:.2f} cores."
            )

    if _apprise_context_in_profiles(results):
        notes.append(_apprise_context_note(results["versions"].get("apprise", "?")))
    return notes


# Verified by reading apprise 2.2.0: apprise/plugins/email/smtp.py and base.py.
APPRISE_CONTEXT_VERIFIED = "2.2.0"


def _apprise_context_in_profiles(results: dict[str, Any]) -> bool:
    for section, key, _ in PROFILED_LOADS:
        for process in ((results.get(section) or {}).get(key) or {}).get("processes") or []:
            for frame, cores in process.get("cores_by_frame") or []:
                if "load_default_certs" in frame and "AppriseSMTPController" in frame and cores >= 0.01:
                    return True
    return False


def _apprise_context_note(apprise_version: str) -> str:
    if apprise_version != APPRISE_CONTEXT_VERIFIED:
        return (
            f"`SSLContext.load_default_certs` under apprise's `AppriseSMTPController.__enter__` used CPU. This run "
            f"used apprise {apprise_version}; the cause was only checked in apprise {APPRISE_CONTEXT_VERIFIED}."
        )
    return (
        f"`SSLContext.load_default_certs` comes from apprise {apprise_version}. `NotifyEmail.send` "
        "(apprise/plugins/email/base.py) opens a new `AppriseSMTPController`, one SMTP connection, per call, and the "
        "service and the baseline make one call per message. Its `__enter__` (apprise/plugins/email/smtp.py) calls "
        "`ssl.create_default_context()` each time, which loads the system's CA certificates, also for plain "
        "`mailto://` targets where no TLS is used."
    )


def _baseline_notes(results: dict[str, Any]) -> list[str]:
    single = highest_single(results.get("pipeline"))
    base_single = highest_single(results.get("baseline"))
    if not single or not base_single or not base_single["items_per_s"]:
        return []
    return [
        f"At concurrency {single['concurrency']} the service stored {single['items_per_s'] / base_single['items_per_s']:.0%} "
        f"of the baseline's {format_number(base_single['items_per_s'])} items/s (p99 {format_number(single['p99_ms'], 0)} ms "
        f"against {format_number(base_single['p99_ms'], 0)} ms) with the same model, batching and DuckDB code. Other "
        f"processes used {single['other_cores']:.2f} cores while the service was measured and "
        f"{base_single['other_cores']:.2f} while the baseline was."
    ]


def _memory_notes(results: dict[str, Any]) -> list[str]:
    at_rest = (results.get("pipeline") or {}).get("memory_at_rest") or []
    if not at_rest:
        return []

    by_role: dict[str, int] = {}
    for row in at_rest:
        by_role[row["role"]] = by_role.get(row["role"], 0) + row["rss_bytes"]
    largest = sorted(by_role.items(), key=lambda item: -item[1])[:4]
    rss = sum(by_role.values())
    pss = sum_field(at_rest, "pss_bytes")
    notes = [
        f"At rest the service's {len(at_rest)} processes held {format_gib(rss)} RSS ({format_gib(pss) if pss else '–'} "
        "PSS). The largest roles: " + ", ".join(f"{role} {format_mib(size)} MiB" for role, size in largest) + "."
    ]

    # The dashboard's modules are forks of one multiprocessing forkserver process, so they
    # share most of their pages. RSS counts those pages once per module.
    modules = [row for row in at_rest if row["role"].startswith("Ray dashboard module") and row.get("pss_bytes")]
    if pss and modules:
        module_rss = sum(row["rss_bytes"] for row in modules)
        module_pss = sum(row["pss_bytes"] for row in modules)
        notes.append(
            f"The {len(modules)} Ray dashboard modules, forks of one process, hold {format_mib(module_rss)} MiB RSS but "
            f"{format_mib(module_pss)} MiB PSS. RSS counts a shared page once for every process that maps it, so the "
            "sum of RSS counts the same memory several times. The sum of PSS counts each page once and is the "
            "service's memory for the target."
        )
    return notes
