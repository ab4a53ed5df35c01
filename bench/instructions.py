#!/usr/bin/env python3
"""Instructions per request inside Envoy, counted under valgrind's callgrind: a deterministic
companion to `bench/run.py`'s CPU times, which move by several microseconds between runs on a
shared machine. Method and usage: bench/README.md ("Instructions per request").

    python3 bench/instructions.py                 # floor+es256 and warden, small tools/call
    python3 bench/instructions.py --configs warden,floor+es256,bare --requests 1000

Each configuration is `bench/run.py`'s own (same bootstrap, plugin configuration, token,
revocation feed from bench-upstream). Envoy runs under callgrind with one worker; after a
warm-up the counters are zeroed, N requests go over one keep-alive connection, and the counters
are dumped: every instruction Envoy ran for them (HTTP, filters, V8's generated code, libc),
divided by N, less what Envoy did on its own meanwhile (timers: the filter's tick and feed
polls, the stats flush), counted over an idle window as long and taken off at its rate.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the harness's configurations, fixtures and bootstrap)

REAL_ENVOY = bench.ROOT / ".venv/lib/python3.11/site-packages/envoy/_bin/envoy"
CASE = "call-small/direct"


def envoy_binary() -> Path:
    # `.venv/bin/envoy` is a Python launcher: valgrind must start the binary itself.
    if REAL_ENVOY.exists():
        return REAL_ENVOY
    found = list((bench.ROOT / ".venv/lib").glob("python3*/site-packages/envoy/_bin/envoy"))
    if not found:
        raise bench.BenchError("the envoy binary of the venv is missing: run `make tools` first")
    return found[0]


def totals(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise bench.BenchError(f"no totals in {path}")


def count(cfg: bench.Config, work: Path, upstream_port: int, token: str, warmup: int, n: int,
          case_name: str = CASE) -> float:
    cfg.port, cfg.admin = bench.free_port(), bench.free_port()
    conf = work / f"envoy-{cfg.name}.json"
    conf.write_text(json.dumps(bench.bootstrap(cfg.port, cfg.admin, upstream_port, cfg.filters)))
    out = work / f"callgrind-{cfg.name}.out"
    for old in work.glob(f"callgrind-{cfg.name}.out*"):
        old.unlink()
    cfg.log = work / f"envoy-{cfg.name}.log"
    cfg.proc = bench.spawn(
        ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", f"--callgrind-out-file={out}",
         envoy_binary(), "-c", conf, "--concurrency", "1", "-l", cfg.log_level,
         "--disable-hot-restart", "--base-id", "91"],
        cfg.log, env={"MCP_WARDEN_SESSION_KEY": bench.SESSION_KEY,
                      "MCP_WARDEN_INTERNAL_CREDENTIAL": bench.INTERNAL_CREDENTIAL})
    try:
        bench.wait_ready(cfg, timeout=600)
        case = bench.CASES[case_name]
        conn = http.client.HTTPConnection("127.0.0.1", cfg.port, timeout=120)
        headers = bench.request_headers(token)

        def send(k: int):
            for _ in range(k):
                conn.request("POST", case.path, body=case.body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise bench.BenchError(f"{cfg.name}: status {resp.status}")

        send(warmup)
        if cfg.warden:
            # The revocation feed is adopted (as in `bench/run.py`'s probe) before counting.
            if bench.wait_counter(cfg, bench.POLL_OK_COUNTER, 1, timeout=60) < 1:
                raise bench.BenchError(f"{cfg.name}: the revocation feed was never polled")
        control = lambda *a: subprocess.run(["callgrind_control", *a, str(cfg.proc.pid)], check=True,
                                            capture_output=True)
        control("-z")
        started = time.monotonic()
        send(n)
        busy = time.monotonic() - started
        control("-d")
        # What Envoy does meanwhile on its own (the filter's tick and feed polls, the stats
        # flush) is timer-driven: counted over an idle window and taken off at its rate, so the
        # count does not depend on how fast valgrind ran the requests.
        control("-z")
        idle_started = time.monotonic()
        time.sleep(min(busy, 30.0))
        control("-d")
        idle = time.monotonic() - idle_started
        conn.close()
    finally:
        cfg.proc.terminate()
        try:
            cfg.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            cfg.proc.kill()
    dumps = sorted(work.glob(f"callgrind-{cfg.name}.out.*"), key=lambda p: int(p.suffix[1:]))
    if len(dumps) < 2:
        raise bench.BenchError(f"{cfg.name}: callgrind wrote {len(dumps)} dumps, not 2")
    measured, background = totals(dumps[0]), totals(dumps[1]) * busy / idle
    return (measured - background) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="floor+es256,warden")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--case", default=CASE, choices=sorted(bench.CASES),
                    help="the request sent (bench/run.py's cases), e.g. call-code-16k/direct")
    args = ap.parse_args()
    lock = bench.one_bench_at_a_time()  # noqa: F841 (held until exit: a timed run must not see this one)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise bench.BenchError("valgrind is not installed (Debian: apt-get install valgrind)")
    for path in (bench.TOKEN_SERVICE, bench.WARDEN_WASM, bench.FLOOR_WASM, bench.FIXTURES_BIN, bench.UPSTREAM_BIN):
        if not path.exists():
            raise bench.BenchError(f"{path} is missing: run `make tools build bench-build` first")
    work = bench.TARGET / "bench-instructions"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fx = bench.fixtures(work)
    upstream_port = bench.free_port()
    plugin = bench.rendered_plugin_config(work, upstream_port, fx["jwks"])
    (work / "call.json").write_text(bench.CALL_RESULT)
    (work / "list.json").write_text(bench.LIST_RESULT)
    bench.spawn([bench.UPSTREAM_BIN, "--listen", f"127.0.0.1:{upstream_port}",
                 "--call", work / "call.json", "--list", work / "list.json"], work / "upstream.log")
    # The full run's configurations (native, floor, variants, …) and the smoke run's (warden+ti).
    by_name = {c.name: c for mode in ("full", "smoke")
               for c in bench.configurations(mode, fx["jwks"], fx["jwk"], plugin, None, "")}
    by_name["bare"] = bench.Config("bare", "Envoy with only the router", [bench.BUFFER_FILTER], [args.case])
    wanted = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise bench.BenchError(f"unknown configurations {unknown}; known: {sorted(by_name)}")
    counted = {}
    for name in wanted:
        started = time.monotonic()
        counted[name] = count(by_name[name], work, upstream_port, fx["token"], args.warmup, args.requests,
                              args.case)
        print(f"{name:24} {counted[name]:10,.0f} instructions per request ({args.case}, "
              f"{args.requests} requests, {time.monotonic() - started:.0f} s)", flush=True)
    if "warden" in counted and "floor+es256" in counted:
        print(f"\ninstructions per request, warden ÷ floor+es256 = {counted['warden'] / counted['floor+es256']:.3f}")
    (work / "instructions.json").write_text(json.dumps(counted, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except bench.BenchError as e:
        print(f"instructions: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        bench.stop_children()
