"""``python -m benchmarks reliability``: the evidence behind the engine's guarantees.

- crash safety: ``--kills`` SIGKILLs of a child ingesting on one store (raw, inferred,
  background adds, flushes, purges), each followed by a full check
  (:mod:`benchmarks.crash_harness`); ``--lm NAME`` adds ``--lm-kills`` rounds with a real GGUF;
- a killed server: ``--server-kills`` SIGKILLs of a real ``memengine serve`` while client
  threads add and search over HTTP (:mod:`benchmarks.server_kill`), same checks;
- erasure: bytes of purged users' strings left in the store's files, and what the purge's
  file rewrite costs at a few store sizes;
- network: refused attempts seen by :mod:`engine.netguard` during the whole run.

``--parts`` runs some of them (``crash``, ``purge``, ``server``); the parts not run are kept
from the results file of an earlier run, with the command that produced them, so one part
can be measured again without the whole run.

Writes ``benchmarks/results/reliability.md`` and ``.json`` (with the CPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, machine_info, progress, write_results
from benchmarks.crash_harness import kill_round
from benchmarks.server_kill import server_round

__all__ = ["main"]

PARTS = ("crash", "purge", "server")


def crash_runs(kills: int, lm: str | None, seed: int, max_delay: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="memengine-crash-"))
    db, acks = work / "store" / "crash.duckdb", work / "crash.acks"
    problems: list[str] = []
    rebuilt = pending = 0
    acknowledged = 0
    started = time.perf_counter()
    try:
        for n in progress(range(kills), total=kills, desc=f"kills ({lm or 'scripted'})"):
            result = kill_round(db, acks, seed=seed + n, max_delay=max_delay, lm=lm,
                                timeout=600)
            problems += [f"kill {n}: {p}" for p in result.problems]
            rebuilt += result.rebuilt_indexes
            pending += result.pending_on_open
            acknowledged = result.acknowledged
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"extractor": lm or "scripted", "kills": kills, "acknowledged_operations": acknowledged,
            "pending_on_open": pending, "indexes_rebuilt": rebuilt, "problems": problems[:50],
            "problem_count": len(problems), "seconds": round(time.perf_counter() - started, 1)}


def server_runs(kills: int, clients: int, seed: int, max_delay: float,
                lm: str | None = None) -> dict[str, Any]:
    """``kills`` rounds of a served store killed under load, on one store (with ``lm``, the
    server extracts with that GGUF; without, inferred adds stay pending in it)."""
    work = Path(tempfile.mkdtemp(prefix="memengine-serverkill-"))
    db, acks = work / "store" / "served.duckdb", work / "served.acks"
    problems: list[str] = []
    pending = requests = acknowledged = 0
    started = time.perf_counter()
    try:
        for n in progress(range(kills), total=kills, desc="server kills"):
            result = server_round(db, acks, seed=seed + n, max_delay=max_delay,
                                  clients=clients, lm=lm, timeout=600)
            problems += [f"kill {n}: {p}" for p in result.problems]
            pending += result.pending_on_open
            requests += result.requests
            acknowledged = result.acknowledged
    finally:
        shutil.rmtree(work, ignore_errors=True)
    extractor = lm or "none in the server (inferred adds stay pending), scripted on open"
    return {"extractor": extractor,
            "kills": kills, "clients": clients, "requests_answered": requests,
            "acknowledged_operations": acknowledged, "pending_on_open": pending,
            "problems": problems[:50], "problem_count": len(problems),
            "seconds": round(time.perf_counter() - started, 1)}


def purge_costs(sizes: list[int]) -> list[dict[str, Any]]:
    """Seconds a purge takes (delete + file rewrite) and purged strings left, per size."""
    from engine.backends.embed import HashingEmbedder
    from engine.memory import Memory

    rows = []
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix="memengine-purge-"))
        try:
            db = work / "store" / "purge.duckdb"
            secrets = [uuid.uuid4().hex for _ in range(200)]
            with Memory(db, embedder=HashingEmbedder(64), infer=False) as memory:
                memory.add([f"victim says {s}" for s in secrets], user_id="victim")
                for start in range(0, size, 1000):
                    memory.add([f"keeper fact {i}" for i in range(start, min(size, start + 1000))],
                               user_id="keeper")
                memory.store.query("CHECKPOINT")
                file_mb = db.stat().st_size / 1e6
                started = time.perf_counter()
                memory.purge("victim")
                seconds = time.perf_counter() - started
                memory.add("after the purge", user_id="keeper")
            blobs = [p.read_bytes() for p in db.parent.rglob("*") if p.is_file()]
            left = sum(any(s.encode() in b for b in blobs) for s in secrets)
            rows.append({"facts": size, "file_mb": round(file_mb, 1),
                         "purge_seconds": round(seconds, 3), "purged_strings": len(secrets),
                         "strings_left_on_disk": left})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def _markdown(data: dict[str, Any]) -> str:
    machine = data["machine"]
    lines = ["# Reliability run", "",
             f"CPU: {machine.get('cpu')}, {machine.get('logical_cores')} cores. "
             f"Command: `python -m benchmarks reliability {' '.join(data['config']['argv'])}`", "",
             "| check | tried | failures / left |", "|---|---|---|"]
    for crash in data["results"]["crash"]:
        lines.append(f"| SIGKILL during ingest ({crash['extractor']}): kills survived, "
                     f"{crash['acknowledged_operations']} acknowledged operations checked "
                     f"| {crash['kills']} | {crash['problem_count']} lost or inconsistent |")
    for row in data["results"].get("server", []):
        lm = "" if row["extractor"].startswith("none") else f", {row['extractor']} extracting"
        lines.append(f"| SIGKILL of `memengine serve` under load ({row['clients']} client threads"
                     f"{lm}, "
                     f"{row['requests_answered']:,} requests answered): kills survived, "
                     f"{row['acknowledged_operations']} acknowledged adds checked "
                     f"| {row['kills']} | {row['problem_count']} lost or inconsistent |")
    for row in data["results"]["purge"]:
        lines.append(f"| purge at {row['facts']:,} facts ({row['file_mb']} MB): purged strings "
                     f"searched in the files' bytes | {row['purged_strings']} | "
                     f"{row['strings_left_on_disk']} left (purge took {row['purge_seconds']} s) |")
    lines.append(f"| network attempts beyond loopback (audit hook) | whole run | "
                 f"{len(data['results']['network_attempts'])} |")
    lines += ["", "Indexes rebuilt after a kill (a stale or torn index file, rebuilt from "
              "DuckDB): " + ", ".join(str(c["indexes_rebuilt"]) for c in
                                      data["results"]["crash"]), ""]
    commands = data["results"].get("commands", {})
    if len(set(commands.values())) > 1:
        lines += ["Rows by command (parts measured in separate runs, same machine):", ""]
        lines += [f"- {part}: `python -m benchmarks reliability {argv}`"
                  for part, argv in commands.items()]
        lines.append("")
    return "\n".join(lines)


def _earlier() -> dict[str, Any]:
    """The results of the last run, if its file is there and readable."""
    try:
        data = json.loads((RESULTS_DIR / "reliability.json").read_text())
    except (OSError, ValueError):
        return {}
    results = data.get("results", {})
    argv = " ".join(data.get("config", {}).get("argv", []))
    results.setdefault("commands", {part: argv for part in PARTS if part in results})
    return dict(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks reliability")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--max-delay", type=float, default=2.5,
                        help="kill at a random moment up to this many seconds after start")
    parser.add_argument("--lm", default=None, help="also run kills with this GGUF")
    parser.add_argument("--lm-kills", type=int, default=20)
    parser.add_argument("--purge-sizes", default="1000,10000,50000")
    parser.add_argument("--server-kills", type=int, default=20)
    parser.add_argument("--server-clients", type=int, default=4)
    parser.add_argument("--server-lm", default=None,
                        help="also run server kills with this GGUF extracting in the server")
    parser.add_argument("--server-lm-kills", type=int, default=5)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="which parts to run (crash, purge, server); the others are "
                             "kept from the last results file")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="10 kills, small purges")
    args = parser.parse_args(argv)
    from engine import netguard

    netguard.install()
    if args.quick:
        args.kills, args.purge_sizes, args.lm_kills, args.server_kills = 10, "1000", 3, 3
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    results = _earlier() if set(parts) != set(PARTS) else {}
    missing = [p for p in PARTS if p not in parts and p not in results]
    if missing:
        parser.error(f"no earlier results for {', '.join(missing)}: run those parts too")
    commands = dict(results.get("commands", {}))
    earlier_attempts = list(results.get("network_attempts", []))
    if "crash" in parts:
        results["crash"] = [crash_runs(args.kills, None, args.seed, args.max_delay)]
        if args.lm:
            results["crash"].append(crash_runs(args.lm_kills, args.lm, args.seed + 10_000,
                                               args.max_delay * 8))
    if "purge" in parts:
        results["purge"] = purge_costs([int(s) for s in args.purge_sizes.split(",")])
    if "server" in parts:
        results["server"] = [server_runs(args.server_kills, args.server_clients,
                                         args.seed + 20_000, args.max_delay)]
        if args.server_lm:
            results["server"].append(server_runs(
                args.server_lm_kills, args.server_clients, args.seed + 30_000,
                args.max_delay * 8, lm=args.server_lm))
    for part in parts:
        commands[part] = " ".join(argv or [])
    results["commands"] = commands
    results["network_attempts"] = earlier_attempts + netguard.attempts()
    crash, purge = results["crash"], results["purge"]
    data = {"machine": machine_info(), "config": {**vars(args), "argv": argv or []},
            "results": results}
    write_results("reliability", data["config"], data["results"])
    (RESULTS_DIR / "reliability.md").write_text(_markdown(data))
    print(_markdown(data))
    failed = sum(c["problem_count"] for c in crash + results.get("server", [])) + sum(
        p["strings_left_on_disk"] for p in purge)
    return 1 if failed or data["results"]["network_attempts"] else 0
