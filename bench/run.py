#!/usr/bin/env python3
"""mcp-warden's benchmark harness (issues 7 and 23). Method and usage: bench/README.md.

    python3 bench/run.py full    # `make bench`: every configuration and case, writes bench/results/
    python3 bench/run.py smoke   # `make bench-smoke`: warden vs floor+es256, fails past bench/smoke-bound.txt

Everything listens on 127.0.0.1. Each configuration is its own Envoy (1 worker, pinned to core
0); wrk, the upstream and this script run on core 1. Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import fcntl
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target").resolve()
ENVOY = Path(os.environ.get("ENVOY_BIN") or ROOT / ".venv/bin/envoy")
TOKEN_SERVICE = Path(
    os.environ.get("WARDEN_TOKEN_SERVICE_BIN") or TARGET / "debug/warden-token-service"
)
WARDEN_WASM = Path(
    os.environ.get("WARDEN_WASM") or TARGET / "wasm32-wasip1/release/warden_filter.wasm"
)
# The same filter built with `--features alloc-count` (`make bench-build`): its global
# allocator counts allocations, reported as a gauge at the tick (filter/src/alloc_count.rs).
ALLOC_WASM = Path(
    os.environ.get("WARDEN_ALLOC_WASM") or TARGET / "wasm32-wasip1/release/warden_filter_alloc_count.wasm"
)
FLOOR_WASM = TARGET / "wasm32-wasip1/release/warden_bench_floor.wasm"
FIXTURES_BIN = TARGET / "release/bench-fixtures"
UPSTREAM_BIN = TARGET / "release/bench-upstream"
RESULTS_DIR = ROOT / "bench/results"
SMOKE_BOUND_FILE = ROOT / "bench/smoke-bound.txt"
# The recorded allocations per warm request (small tools/call, direct): the target row's goal
# and the smoke test's bound. One number, in this file.
ALLOC_BOUND_FILE = ROOT / "bench/alloc-bound.txt"
# The configuration running the counting build; its CPU is not compared with anything.
ALLOC_CONFIG = "warden-alloc-count"
ALLOC_CASES = ["call-small/direct", "call-16k/direct", "list/direct"]
DEFAULT_BASELINE = "488d884"

# The names the warden route and the token use. The authority is only a name: every Envoy
# listens on a port of its own, and wrk sends this Host header to all of them.
AUTHORITY = "127.0.0.1:18000"
RESOURCE = f"http://{AUTHORITY}/mcp"
ISSUER = "http://127.0.0.1:18999"
SESSION_KEY = "bench-session-key-0123456789abcdef-not-a-secret"
# What the filter signs its calls to the (stand-in) token service with.
INTERNAL_CREDENTIAL = "bench-internal-credential-of-43-characters"
PROTOCOL_VERSION = "2025-06-18"
CONNECTIONS = 32
# A run during which other processes used more than this share of a core is run again.
DISTURBED = 0.15
RETRIES = 2
ENVOY_CORE = "0"
LOAD_CORE = "1"

# ---------------------------------------------------------------------------------------------
# Workload: a per-tool policy, a 50-tool server of which the caller may call 10.

ALLOWED_TOOLS = [
    "echo", "search", "fetch", "read_file", "list_directory",
    "get_issue", "list_issues", "get_user", "whoami", "add",
]
DELETE_TOOLS = [f"delete_{n}" for n in (
    "file", "directory", "issue", "comment", "user", "repo", "branch", "tag", "release", "secret")]
OTHER_TOOLS = [f"{verb}_{noun}" for verb in ("write", "create", "update") for noun in (
    "file", "directory", "issue", "comment", "user", "repo", "branch", "tag", "release", "secret")]
ALL_TOOLS = ALLOWED_TOOLS + DELETE_TOOLS + OTHER_TOOLS
assert len(ALL_TOOLS) == 50 and len(set(ALL_TOOLS)) == 50

# PPL (README "Policy"), five rules using `in` and `starts_with`: the handshake and the listing;
# ten tools for signed-in users; never a delete_ tool, nor a write_ tool; never a user of a
# deny list (the bench token's `sub` is not on it). tools/list results are filtered down to the
# ten. The same outcome as the two-rule policy of issue 7, with the work of five.
LISTING_METHODS = ["initialize", "notifications/initialized", "tools/list", "ping"]
DENIED_USERS = ["suspended@example.com", "former-employee@example.com", "contractor@example.org"]
POLICY = [
    {"allow": {"or": [{"mcp_method": {"in": LISTING_METHODS}}]}},
    {"allow": {"and": [{"authenticated_user": True}, {"mcp_tool": {"in": ALLOWED_TOOLS}}]}},
    {"deny": {"or": [{"mcp_tool": {"starts_with": "delete_"}}]}},
    {"deny": {"or": [{"mcp_tool": {"starts_with": "write_"}}]}},
    {"deny": {"or": [{"user": {"in": DENIED_USERS}}]}},
]
assert len(POLICY) == 5


def tool_entry(name: str) -> dict:
    return {
        "name": name,
        "description": f"Runs {name.replace('_', ' ')} against the workspace and returns the outcome as text.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "target": {"type": "string", "description": "What to act on (a path, an id or a query)."},
                "limit": {"type": "integer", "description": "At most this many results."},
            },
            "required": ["target"],
        },
    }


def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def call_body(total: int) -> bytes:
    """A tools/call of `echo` padded (in its message argument) to exactly `total` bytes."""
    head = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"'
    tail = '"}}}'
    text = "hello from the mcp-warden benchmark; "
    room = total - len(head) - len(tail)
    message = (text * (room // len(text) + 1))[:room]
    body = (head + message + tail).encode()
    assert len(body) == total
    json.loads(body)
    return body


def code_call_body(total: int) -> bytes:
    """A tools/call of `echo` whose argument is code, padded to `total` bytes: an escaped newline
    and escaped quotes on every line, and non-ASCII text, as tool calls that carry code or prose
    have."""
    head = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"'
    tail = '"}}}'
    line = 'let greeting = \\"héllo wörld\\"; // say it\\n'
    room = total - len(head.encode()) - len(tail.encode())
    encoded = line.encode()
    message = (encoded * (room // len(encoded))) + b" " * (room % len(encoded))
    body = head.encode() + message + tail.encode()
    assert len(body) == total
    json.loads(body)
    return body


SMALL_CALL = call_body(207)
BIG_CALL = call_body(16 * 1024)
CODE_CALL = code_call_body(16 * 1024)
LIST_REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}'
CALL_RESULT = compact({"jsonrpc": "2.0", "id": 1, "result": {
    "content": [{"type": "text", "text": "hello from the mcp-warden benchmark"}], "isError": False}})
LIST_RESULT = compact({"jsonrpc": "2.0", "id": 1, "result": {
    "tools": [tool_entry(n) for n in ALL_TOOLS]}})


@dataclass
class Case:
    name: str
    path: str
    body: bytes
    via: str  # "direct" (Envoy direct_response) or "upstream" (bench-upstream)
    listing: bool = False


def make_cases() -> dict[str, Case]:
    cases = {}
    for via in ("direct", "upstream"):
        cases[f"call-small/{via}"] = Case(f"call-small/{via}", f"/mcp/{via}/call", SMALL_CALL, via)
        cases[f"call-16k/{via}"] = Case(f"call-16k/{via}", f"/mcp/{via}/call", BIG_CALL, via)
        cases[f"list/{via}"] = Case(f"list/{via}", f"/mcp/{via}/list", LIST_REQUEST, via, listing=True)
    cases["call-code-16k/direct"] = Case("call-code-16k/direct", "/mcp/direct/call", CODE_CALL, "direct")
    return cases


CASES = make_cases()
CASE_ORDER = list(CASES)


def request_headers(token: str) -> dict[str, str]:
    # The same header bytes for every configuration (bare Envoy and the floor get the token too).
    return {
        "Host": AUTHORITY,
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": PROTOCOL_VERSION,
    }


# ---------------------------------------------------------------------------------------------
# Processes: every child gets SIGTERM if this script dies, and is stopped at exit.

CHILDREN: list[subprocess.Popen] = []
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    out = open(log, "wb")
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent,
    )
    out.close()
    CHILDREN.append(proc)
    return proc


def stop_children():
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in CHILDREN:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    CHILDREN.clear()


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


class BenchError(Exception):
    pass


def run(argv: list, **kw) -> str:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout
    except subprocess.CalledProcessError as e:
        raise BenchError(f"{' '.join(map(str, argv))} failed ({e.returncode}):\n{e.stderr}{e.stdout}") from e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_post(port: int, case: Case, token: str, drop: tuple = ()) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {k: v for k, v in request_headers(token).items() if k not in drop}
    try:
        conn.request("POST", case.path, body=case.body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sys_seconds(pid: int) -> float:
    """stime alone: the kernel's part of cpu_seconds (system calls, e.g. a log line's write)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[12]) / CLK_TCK


PF_KTHREAD = 0x00200000


def others_cpu_seconds(skip_comm: str | None = None) -> float:
    """CPU time of every user-space process but this harness and its children, with the time of
    their reaped children (a build's short-lived compilers count too); `skip_comm`: processes of
    that name count as ours too (PostgreSQL's, under the token service's load)."""
    ours = {os.getpid()} | {p.pid for p in CHILDREN}
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        if int(f[6]) & PF_KTHREAD or (skip_comm and stat[stat.index("(") + 1:stat.rindex(")")] == skip_comm):
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# Builds and fixtures.

def build_baseline(rev: str) -> tuple[Path | None, str]:
    """The warden filter at `rev`, built once into target/bench-baseline (cached by commit)."""
    try:
        sha = run(["git", "-C", ROOT, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"]).strip()
    except BenchError:
        return None, f"baseline revision {rev!r} not found in this repository: warden-baseline skipped"
    base = TARGET / "bench-baseline"
    out = base / f"warden_filter-{sha[:12]}.wasm"
    if out.exists():
        return out, sha
    src = base / f"src-{sha[:12]}"
    if not (src / "Cargo.toml").exists():
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", ROOT, "archive", sha], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", src], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise BenchError(f"git archive {sha} failed")
    print(f"building the baseline filter at {sha[:12]} (cached in {base}) ...", flush=True)
    subprocess.run(
        ["cargo", "build", "-p", "warden-filter", "--target", "wasm32-wasip1", "--release"],
        cwd=src, env={**os.environ, "CARGO_TARGET_DIR": str(base / "target")}, check=True,
    )
    shutil.copy(base / "target/wasm32-wasip1/release/warden_filter.wasm", out)
    return out, sha


def fixtures(work: Path) -> dict:
    return json.loads(run([FIXTURES_BIN, "--issuer", ISSUER, "--audience", RESOURCE]))


def operator_config(work: Path, upstream_port: int) -> dict:
    """The bench route as an operator would write it (README "Operator configuration")."""
    return {
        "authorization_server": {
            "issuer": ISSUER,
            "listen": ISSUER.removeprefix("http://"),
            "signing_key": {"file": str(work / "signing-key.json"), "alg": "ES256"},
        },
        "storage": {"sqlite": str(work / "warden.db")},
        "identity_provider": {"local": {"users": []}},
        "clients": [],
        "envoy": {"listen": AUTHORITY, "admin": "127.0.0.1:18998"},
        "routes": [{
            "name": "bench",
            "from": f"http://{AUTHORITY}",
            "prefix": "/mcp",
            "to": f"http://127.0.0.1:{upstream_port}/mcp",
            "mcp": {"server": {}},
            "policy": POLICY,
        }],
    }


def rendered_plugin_config(work: Path, upstream_port: int, jwks: dict) -> dict:
    """The filter's plugin configuration as `render-envoy` writes it, with the JWKS inline
    (`jwks_static`) instead of fetched from a token service."""
    config = work / "warden-bench.yaml"
    config.write_text(json.dumps(operator_config(work, upstream_port), indent=2))  # JSON is YAML
    rendered = run([TOKEN_SERVICE, "render-envoy", "--config", config, "--wasm", WARDEN_WASM])
    (work / "rendered-envoy.yaml").write_text(rendered)
    lines = rendered.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "configuration:":
            for follow in lines[i + 1:i + 4]:
                m = re.match(r"\s*value: (\".*\")\s*$", follow)
                if m:
                    plugin = json.loads(json.loads(m.group(1)))
                    plugin.pop("jwks", None)
                    plugin["jwks_static"] = jwks
                    # No access log reads the authorize record here (render-envoy turns the
                    # filter state on for its own access log line).
                    plugin["authorize_filter_state"] = False
                    # The revocation feed is on, as users run it: bench-upstream stands in
                    # for the token service's internal listener and serves a feed of a few
                    # hundred revoked grants and users (the check is a local look-up).
                    plugin["token_service"] = {"cluster": "bench_upstream",
                                               "authority": "bench-upstream", "timeout_ms": 2000}
                    return plugin
    raise BenchError("no plugin configuration found in the rendered bootstrap")


# Plugin configuration fields of interface version 1 as the baseline knew them (README): the
# baseline gets the rendered configuration reduced to these.
V1_TOP = {"version", "issuer", "jwks", "jwks_static", "clock_skew_seconds", "token_cache_entries", "routes"}
V1_ROUTE = {"name", "resource", "resource_name", "scopes", "allowed_origins", "policy", "max_request_bytes",
            "deny_response", "filter_tools_list", "log_tool_parameters", "redact_parameters"}


def v1_only(plugin: dict) -> dict:
    out = {k: v for k, v in plugin.items() if k in V1_TOP}
    out["routes"] = [{k: v for k, v in r.items() if k in V1_ROUTE} for r in plugin["routes"]]
    return out


# ---------------------------------------------------------------------------------------------
# Envoy bootstraps: one skeleton (the HTTP settings `render-envoy` writes), different filters.

def sock(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def json_headers() -> list:
    return [{"header": {"key": "content-type", "value": "application/json"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


def route_header(mutation: dict) -> dict:
    """render-envoy's per-route `header_mutation`: Envoy tells the filter its route in a header."""
    return {"envoy.filters.http.header_mutation": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
        "mutations": {"request_mutations": [mutation]}}}


def route_config(upstream_port: int) -> dict:
    name = "mcp-warden:bench"  # render-envoy's route name: the filter follows Envoy's routing
    ours = route_header({"append": {"header": {"key": "x-mcp-warden-route", "value": name},
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}})
    return {
        "name": "bench",
        "max_direct_response_body_size_bytes": 1024 * 1024,
        "virtual_hosts": [{
            "name": "bench",
            "domains": ["*"],
            "routes": [
                {"name": name, "match": {"path": "/mcp/direct/call"},
                 "direct_response": {"status": 200, "body": {"inline_string": CALL_RESULT}},
                 "response_headers_to_add": json_headers(), "typed_per_filter_config": ours},
                {"name": name, "match": {"path": "/mcp/direct/list"},
                 "direct_response": {"status": 200, "body": {"inline_string": LIST_RESULT}},
                 "response_headers_to_add": json_headers(), "typed_per_filter_config": ours},
                {"name": name, "match": {"path_separated_prefix": "/mcp"},
                 "route": {"cluster": "bench_upstream", "timeout": "0s", "idle_timeout": "3600s",
                           "host_rewrite_literal": f"127.0.0.1:{upstream_port}"},
                 "request_headers_to_remove": ["x-mcp-warden-route"], "typed_per_filter_config": ours},
                {"match": {"prefix": "/"},
                 "direct_response": {"status": 404, "body": {"inline_string": "no MCP route here\n"}},
                 "typed_per_filter_config": route_header({"remove": "x-mcp-warden-route"})},
            ],
        }],
    }


def bootstrap(listen: int, admin: int, upstream_port: int, filters: list) -> dict:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "http_protocol_options": {"enable_trailers": True},
        "request_headers_timeout": "10s",
        "request_timeout": "60s",
        "common_http_protocol_options": {"idle_timeout": "60s", "headers_with_underscores_action": "REJECT_REQUEST"},
        "stream_idle_timeout": "3600s",
        "route_config": route_config(upstream_port),
        "http_filters": filters + [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }
    return {
        "admin": {"address": sock(admin)},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": sock(listen),
                "per_connection_buffer_limit_bytes": 1024 * 1024 + 64 * 1024,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
            }],
            "clusters": [{
                "name": "bench_upstream",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "bench_upstream", "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": sock(upstream_port)}}]}]},
            }],
        },
    }


def wasm_filter(name: str, wasm: Path, configuration: str) -> dict:
    """Like render-envoy's: V8, the head held until the body is judged, the session key from env."""
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "fail_open": False,
                "allow_on_headers_stop_iteration": True,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "environment_variables": {"host_env_keys": ["MCP_WARDEN_SESSION_KEY",
                                                                "MCP_WARDEN_INTERNAL_CREDENTIAL"]},
                    "code": {"local": {"filename": str(wasm)}},
                },
            },
        },
    }


# Sets the route header from the per-route configuration (render-envoy puts it before the filter).
HEADER_MUTATION_FILTER = {"name": "envoy.filters.http.header_mutation", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"}}


# Without it, Envoy answers a direct_response as soon as it has the request head; on HTTP/1.1 it
# then closes the connection (the body was never read), so "bare" would measure a TCP connection
# per request. Every other configuration reads the whole body before answering anyway.
BUFFER_FILTER = {"name": "envoy.filters.http.buffer", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
    "max_request_bytes": 1024 * 1024}}


def meta(*keys: str) -> list:
    return [{"key": k} for k in keys]


def mcp_string(path: list, matcher: dict) -> dict:
    return {"metadata": {"filter": "envoy.filters.http.mcp", "path": path,
                         "value": {"string_match": matcher}}}


def native_filters(jwks: dict) -> list:
    """Envoy's own chain for the same policy: jwt_authn (inline JWKS, cached verifications), the
    MCP filter (JSON-RPC attributes as dynamic metadata), RBAC on those attributes."""
    allow = {"or_rules": {"rules": [
        {"or_rules": {"rules": [mcp_string(meta("method"), {"exact": m}) for m in LISTING_METHODS]}},
        {"or_rules": {"rules": [mcp_string(meta("params", "name"), {"exact": t}) for t in ALLOWED_TOOLS]}},
    ]}}
    deny = [{"not_rule": mcp_string(meta("params", "name"), {"prefix": p})} for p in ("delete_", "write_")]
    # The user deny list, on the token's `sub` (jwt_authn's payload in dynamic metadata).
    denied_users = {"not_id": {"or_ids": {"ids": [
        {"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": meta("warden", "sub"),
                      "value": {"string_match": {"exact": u}}}} for u in DENIED_USERS]}}}
    return [
        BUFFER_FILTER,
        {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"warden": {
                "issuer": ISSUER,
                "audiences": [RESOURCE],
                "local_jwks": {"inline_string": compact(jwks)},
                "forward": False,
                "payload_in_metadata": "warden",
                "jwt_cache_config": {"jwt_cache_size": 1000},
            }},
            "rules": [{"match": {"prefix": "/mcp"}, "requires": {"provider_name": "warden"}}],
        }},
        {"name": "envoy.filters.http.mcp", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp",
            "traffic_mode": "REJECT_NO_MCP",
            "max_request_body_size": 1024 * 1024,
        }},
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"mcp-tools": {
                "permissions": [{"and_rules": {"rules": [allow, *deny]}}],
                "principals": [denied_users],
            }}},
        }},
    ]


# ---------------------------------------------------------------------------------------------
# Configurations.

@dataclass
class Config:
    name: str
    describe: str
    filters: list
    cases: list[str]
    log_level: str = "warn"
    # Envoy's log through `--log-path` (its buffered file sink, flushed by a thread) instead of
    # stderr, where every line is a write(2) of its own.
    log_path: bool = False
    warden: bool = False  # check the filter's allow counter
    checks_token: bool = False  # a request without a token must get 401
    checks_policy: bool = False  # a call to a delete_ tool must get 403
    visible_tools: int = 50  # tools a tools/list answer must list
    counts_allocations: bool = False  # the counting build: read its allocation gauge around a run
    port: int = 0
    admin: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None


def configurations(mode: str, jwks: dict, jwk: dict, plugin: dict, baseline: Path | None,
                   baseline_note: str) -> list[Config]:
    every = CASE_ORDER
    floor_es256 = compact({"es256": True, "jwk": jwk})
    unfiltered = json.loads(json.dumps(plugin))
    for r in unfiltered["routes"]:
        r["filter_tools_list"] = False
    def warden(wasm: Path, cfg: dict) -> list:
        front = [HEADER_MUTATION_FILTER] if cfg.get("route_header") else []
        return front + [wasm_filter("mcp-warden", wasm, compact(cfg))]
    # The baseline's plugin configuration, without the fields it did not know yet.
    old_plugin, old_unfiltered = v1_only(plugin), v1_only(unfiltered)
    GUARD = {"warden": True, "checks_token": True, "checks_policy": True}
    # render-envoy's own setting: the record stored as filter state for its access log line.
    filter_state = {**plugin, "authorize_filter_state": True}
    configs = [
        Config("bare", "Envoy with only the router (and Envoy's buffer filter, see Notes)", [BUFFER_FILTER], every),
        Config("native", "jwt_authn (inline JWKS, jwt_cache_config) + mcp + rbac on the MCP metadata",
               native_filters(jwks), every, checks_token=True, checks_policy=True),
        Config("floor", "minimal Wasm filter: hold the head, buffer the body, serde_json parse",
               [wasm_filter("bench-floor", FLOOR_WASM, "{}")], every),
        Config("floor+es256", "floor + ES256 signature check with a verified-token cache, Authorization removed",
               [wasm_filter("bench-floor", FLOOR_WASM, floor_es256)], every, checks_token=True),
        Config("warden", f"mcp-warden's filter ({WARDEN_WASM.name} of this tree), rendered plugin config",
               warden(WARDEN_WASM, plugin), every, **GUARD, visible_tools=len(ALLOWED_TOOLS)),
        Config("warden-unfiltered", "warden with filter_tools_list: false (the unfiltered tools/list path)",
               warden(WARDEN_WASM, unfiltered), ["list/direct"], **GUARD),
        Config("warden+info-log", "warden with Envoy at -l info: the authorize line is written (to a file)",
               warden(WARDEN_WASM, plugin), ["call-small/direct"], log_level="info", **GUARD),
        Config("warden+info-log-path", "warden with Envoy at -l info and --log-path: the authorize line goes "
               "to Envoy's buffered file sink", warden(WARDEN_WASM, plugin), ["call-small/direct"],
               log_level="info", log_path=True, **GUARD),
        Config("warden+filter-state", "warden with authorize_filter_state on, as render-envoy writes it: every "
               "request's authorize record rendered and stored as filter state (no access log prints it here)",
               warden(WARDEN_WASM, filter_state), ["call-small/direct"], **GUARD),
        Config(ALLOC_CONFIG, f"warden built with the `alloc-count` feature ({ALLOC_WASM.name}): counts "
               "allocations per request; its CPU is not a target figure (the counting allocator)",
               warden(ALLOC_WASM, plugin), ALLOC_CASES, **GUARD, visible_tools=len(ALLOWED_TOOLS),
               counts_allocations=True),
    ]
    if baseline is not None:
        configs += [
            Config("warden-baseline", f"mcp-warden's filter at {baseline_note[:12]}",
                   warden(baseline, old_plugin), every, **GUARD, visible_tools=len(ALLOWED_TOOLS)),
            Config("warden-baseline-unfiltered", "the baseline with filter_tools_list: false",
                   warden(baseline, old_unfiltered), ["list/direct"], **GUARD),
            Config("warden-baseline+info-log", "the baseline with Envoy at -l info",
                   warden(baseline, old_plugin), ["call-small/direct"], log_level="info", **GUARD),
        ]
    # Candidate builds measured beside the others in the same rounds, e.g. before and after a
    # change: BENCH_VARIANTS="before=/tmp/a.wasm,after=/tmp/b.wasm".
    variants = [v.split("=", 1) for v in os.environ.get("BENCH_VARIANTS", "").split(",") if "=" in v]
    for name, wasm in variants:
        # A name starting with `x` marks an experiment that may break behaviour: unguarded.
        guard = {} if name.startswith("x") else GUARD
        configs.append(Config(f"variant-{name}", f"mcp-warden's filter built as {wasm}",
                              warden(Path(wasm), plugin), ["call-small/direct"], **guard))
    # Upstream OAuth (issue 8): the route sends the user's upstream token, which the filter
    # gets from the token service once (bench-upstream stands in for its internal listener)
    # and then from its cache: the warm path adds a cache look-up and a header.
    with_ti = json.loads(json.dumps(plugin))
    # The internal credential comes from Envoy's environment (start_envoy), never the config.
    with_ti["token_service"] = {"cluster": "bench_upstream", "authority": "bench-upstream",
                                "timeout_ms": 2000}
    for r in with_ti["routes"]:
        r["upstream_oauth"] = True
    configs.append(Config("warden+ti", "warden on a route with upstream_oauth (warm upstream-token cache)",
                          warden(WARDEN_WASM, with_ti), ["call-small/direct"], **GUARD))
    # The same filter reading Envoy's route from the `xds.route_name` property (no route header),
    # as where Envoy does not set the header (e.g. Istio without it).
    by_property = {k: v for k, v in plugin.items() if k != "route_header"}
    configs.append(Config("warden-route-property", "warden with the route read from xds.route_name (no route_header)",
                          warden(WARDEN_WASM, by_property), ["call-small/direct"], **GUARD))
    if mode == "smoke":
        configs = [c for c in configs
                   if c.name in ("warden", "warden+ti", "floor+es256", ALLOC_CONFIG) or c.name.startswith("variant-")
                   or (c.name == "warden-route-property" and os.environ.get("BENCH_ROUTE_PROPERTY"))]
        for c in configs:
            c.cases = ["call-small/direct"]
    return configs


def start_envoy(cfg: Config, work: Path, upstream_port: int, base_id: int):
    cfg.port, cfg.admin = free_port(), free_port()
    path = work / f"envoy-{cfg.name}.json"
    path.write_text(json.dumps(bootstrap(cfg.port, cfg.admin, upstream_port, cfg.filters), indent=1))
    cfg.log = work / f"envoy-{cfg.name}.log"
    cfg.proc = spawn(
        ["taskset", "-c", ENVOY_CORE, ENVOY, "-c", path, "--concurrency", "1", "-l", cfg.log_level,
         "--disable-hot-restart", "--base-id", str(base_id),
         *(["--log-path", work / f"envoy-{cfg.name}-app.log"] if cfg.log_path else [])],
        cfg.log, env={"MCP_WARDEN_SESSION_KEY": SESSION_KEY,
                      "MCP_WARDEN_INTERNAL_CREDENTIAL": INTERNAL_CREDENTIAL},
    )
    if cfg.log_path:
        # Envoy's own log goes there (stderr keeps only what comes before it opens the file):
        # error reports tail it, and its bytes are counted (as the sink flushes them).
        cfg.log = work / f"envoy-{cfg.name}-app.log"


def wait_ready(cfg: Config, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cfg.proc.poll() is not None:
            raise BenchError(f"Envoy for {cfg.name} exited ({cfg.proc.returncode}):\n{tail(cfg.log)}")
        try:
            status, body = http_get(cfg.admin, "/ready")
            if status == 200 and body.strip() == b"LIVE":
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"Envoy for {cfg.name} not ready after {timeout} s:\n{tail(cfg.log)}")


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def counter(cfg: Config, name: str) -> int:
    status, body = http_get(cfg.admin, f"/stats?filter=^{re.escape(name)}$")
    m = re.search(rb": (\d+)", body) if status == 200 else None
    return int(m.group(1)) if m else 0


ALLOWED_COUNTER = "wasmcustom.mcp_warden.requests_allowed"
POLL_OK_COUNTER = "wasmcustom.mcp_warden.revocation_poll_ok"
POLL_FAILED_COUNTER = "wasmcustom.mcp_warden.revocation_poll_failed"


def wait_counter(cfg: Config, name: str, at_least: int, timeout: float = 3.0) -> int:
    """The counter once it reaches `at_least`, or as it is after `timeout`: the filter adds its
    allow count once a second (batched), not per request."""
    deadline = time.monotonic() + timeout
    value = counter(cfg, name)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        value = counter(cfg, name)
    return value
CX_COUNTER = "http.bench.downstream_cx_total"
ALLOC_GAUGE = "wasmcustom.mcp_warden.bench_allocations"
# The filter's longest tick (filter/src/worker.rs `TICK`; with the revocation feed on it ticks
# every 500 ms at most), with a margin.
TICK_SECONDS = 1.0


def allocations_after_tick(cfg: Config) -> int:
    """The counting build's allocation gauge once a tick has reported what the load allocated:
    polls until the gauge moves (a tick after the load stopped; ticks allocate too) or a whole
    tick period has passed."""
    value = counter(cfg, ALLOC_GAUGE)
    deadline = time.monotonic() + TICK_SECONDS * 1.5
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = counter(cfg, ALLOC_GAUGE)
        if now != value:
            return now
    return value


def probe(cfg: Config, token: str):
    """One request per case before measuring: 2xx, the token accepted, tools/list filtered."""
    before = counter(cfg, ALLOWED_COUNTER) if cfg.warden else 0
    for name in cfg.cases:
        case = CASES[name]
        status, body = http_post(cfg.port, case, token)
        if not 200 <= status < 300:
            raise BenchError(f"{cfg.name} {name}: HTTP {status}: {body[:300]!r}\n{tail(cfg.log)}")
        if case.listing:
            tools = [t["name"] for t in json.loads(body)["result"]["tools"]]
            if len(tools) != cfg.visible_tools:
                raise BenchError(f"{cfg.name} {name}: tools/list has {len(tools)} tools, expected {cfg.visible_tools}")
            if cfg.visible_tools == len(ALLOWED_TOOLS) and sorted(tools) != sorted(ALLOWED_TOOLS):
                raise BenchError(f"{cfg.name} {name}: unexpected tools {tools}")
    if cfg.warden:
        after = wait_counter(cfg, ALLOWED_COUNTER, before + len(cfg.cases))
        if after - before < len(cfg.cases):
            raise BenchError(f"{cfg.name}: {ALLOWED_COUNTER} went {before} -> {after} for {len(cfg.cases)} requests")
    # The revocation feed is really on: the filter has read it (and never failed to).
    if cfg.warden and not cfg.name.startswith(("warden-baseline", "variant-")):
        polls = wait_counter(cfg, POLL_OK_COUNTER, 1)
        failed = counter(cfg, POLL_FAILED_COUNTER)
        if polls < 1 or failed:
            raise BenchError(f"{cfg.name}: revocation feed polls ok {polls}, failed {failed}\n{tail(cfg.log)}")
    # The checks are really in force: the configurations compared do the same work.
    small = CASES["call-small/direct"]
    if cfg.checks_token:
        status, _ = http_post(cfg.port, small, token, drop=("Authorization",))
        if status != 401:
            raise BenchError(f"{cfg.name}: a request without a token got {status}, not 401")
    if cfg.checks_policy:
        denied = Case("deny", small.path, small.body.replace(b'"name":"echo"', b'"name":"delete_file"'), "direct")
        status, _ = http_post(cfg.port, denied, token)
        if status != 403:
            raise BenchError(f"{cfg.name}: a call to delete_file got {status}, not 403")


# ---------------------------------------------------------------------------------------------
# Load generation.

def lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string literal (ASCII here) is a valid Lua string literal


def write_wrk_script(work: Path, case: Case, token: str) -> Path:
    body_file = work / f"body-{case.name.replace('/', '-')}.json"
    body_file.write_bytes(case.body)
    headers = "\n".join(f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in request_headers(token).items())
    script = work / f"wrk-{case.name.replace('/', '-')}.lua"
    script.write_text(f"""-- generated by bench/run.py
local f = assert(io.open({lua_string(str(body_file))}, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = {lua_string(case.path)}
{headers}

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""")
    return script


def child_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def wrk(port: int, script: Path, seconds: int) -> tuple[dict, float]:
    """Runs wrk on the load core; returns its summary and its own CPU seconds."""
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
            "-s", str(script), f"http://127.0.0.1:{port}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}):\n{out}")
    m = re.search(r"BENCH_RESULT (\{.*\})", out)
    if not m:
        raise BenchError(f"wrk printed no result:\n{out}")
    result = json.loads(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    result["output"] = out
    return result, usage.ru_utime + usage.ru_stime


@dataclass
class Sample:
    config: str
    case: str
    round: int
    requests: int
    seconds: float
    rps: float
    cpu_us: float
    p50_us: float
    p99_us: float
    rss_mib: float
    load_core_busy: float  # wrk + upstream CPU over the run, share of one core
    extra: dict = field(default_factory=dict)


def measure(cfg: Config, case: Case, rnd: int, script: Path, warmup: int, seconds: int,
            upstream: subprocess.Popen) -> Sample:
    if cfg.proc.poll() is not None:
        raise BenchError(f"Envoy for {cfg.name} died:\n{tail(cfg.log)}")
    cx0 = counter(cfg, CX_COUNTER)
    if warmup > 0:
        res, _ = wrk(cfg.port, script, warmup)
        check(cfg, case, res, "warm-up")
    allowed0 = counter(cfg, ALLOWED_COUNTER) if cfg.warden else 0
    # The warm-up's allocations reported before the measured run starts.
    allocs0 = allocations_after_tick(cfg) if cfg.counts_allocations else 0
    log0 = file_size(cfg.log)
    up0 = child_cpu(upstream.pid)
    others0 = others_cpu_seconds()
    sys0, cpu0 = sys_seconds(cfg.proc.pid), cpu_seconds(cfg.proc.pid)
    res, wrk_cpu = wrk(cfg.port, script, seconds)
    cpu1, sys1 = cpu_seconds(cfg.proc.pid), sys_seconds(cfg.proc.pid)
    others1 = others_cpu_seconds()
    up1 = child_cpu(upstream.pid)
    rss = rss_mib(cfg.proc.pid)
    log_bytes = file_size(cfg.log) - log0
    check(cfg, case, res, "run")
    connections = counter(cfg, CX_COUNTER) - cx0
    if connections > 4 * CONNECTIONS:
        raise BenchError(f"{cfg.name} {case.name}: {connections} downstream connections for two wrk runs of "
                         f"{CONNECTIONS}: connections are not reused, the figures would measure TCP setup")
    if cfg.warden:
        allowed = wait_counter(cfg, ALLOWED_COUNTER, allowed0 + res["requests"]) - allowed0
        if allowed < res["requests"]:
            raise BenchError(f"{cfg.name} {case.name}: {res['requests']} requests answered but only "
                             f"{allowed} allowed by the filter ({ALLOWED_COUNTER})")
    secs = res["duration_us"] / 1e6
    n = res["requests"]
    extra = {"log_bytes_per_request": log_bytes / n, "downstream_connections": connections,
             # The kernel's part of cpu_us (stime): system calls such as a log line's write.
             "sys_us": (sys1 - sys0) * 1e6 / n,
             # Other processes' work during the run, in cores: it disturbs the figures.
             "others_busy": (others1 - others0) / secs}
    if cfg.counts_allocations:
        # The tick that added the run's allowed requests (waited for above) reported its
        # allocations first; one more tick covers the responses still in flight then.
        allocs = allocations_after_tick(cfg) - allocs0
        if allocs <= 0:
            raise BenchError(f"{cfg.name} {case.name}: {ALLOC_GAUGE} did not grow over the run: is "
                             f"{ALLOC_WASM.name} the counting build (`make bench-build`)?")
        extra["allocations"] = allocs
        extra["allocations_per_request"] = allocs / n
    return Sample(cfg.name, case.name, rnd, n, secs, n / secs, (cpu1 - cpu0) * 1e6 / n,
                  res["p50_us"], res["p99_us"], rss, (wrk_cpu + up1 - up0) / secs, extra)


def check(cfg: Config, case: Case, res: dict, what: str):
    errors = {k: res[k] for k in ("connect", "read", "write", "status", "timeout") if res[k]}
    if res["non2xx"]:
        errors["non-2xx"] = res["non2xx"]
    if errors or res["requests"] == 0:
        raise BenchError(
            f"{cfg.name} {case.name} ({what}): refused or failed requests {errors} of {res['requests']}; "
            f"a benchmark of errors is worthless.\nwrk:\n{res['output']}\nEnvoy log tail:\n{tail(cfg.log)}")


# ---------------------------------------------------------------------------------------------
# Statistics and the report.

def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(med(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def by_round(samples: list[Sample], config: str, case: str) -> dict[int, Sample]:
    return {s.round: s for s in samples if s.config == config and s.case == case}


def paired(samples, a: str, case_a: str, b: str, case_b: str, fn) -> list[float]:
    sa, sb = by_round(samples, a, case_a), by_round(samples, b, case_b)
    return [fn(sa[r], sb[r]) for r in sorted(sa) if r in sb]


MIB = 1024 * 1024


def read_alloc_bound() -> float | None:
    """The recorded allocations per warm request (bench/alloc-bound.txt), or None if none is
    recorded yet."""
    if not ALLOC_BOUND_FILE.exists():
        return None
    for line in ALLOC_BOUND_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return float(line)
    return None


def targets(samples: list[Sample], who: str, wasm_bytes: int | None = None) -> list[dict]:
    """The targets of issue 23 (which carries issue 7's forward) for `who` (`warden` or
    `warden-baseline`): (label, goal, bound, sense, format, values per round)."""
    small, big = "call-small/direct", "call-16k/direct"

    def above_floor_16k(big: str = big) -> list[float]:
        # (warden 16 KiB − warden small) − (floor 16 KiB − floor small), per round: what the
        # filter's own handling of 15.8 KiB more body costs beyond what merely reading it costs.
        w_big, w_small = by_round(samples, who, big), by_round(samples, who, small)
        f_big, f_small = by_round(samples, "floor", big), by_round(samples, "floor", small)
        return [(w_big[r].cpu_us - w_small[r].cpu_us) - (f_big[r].cpu_us - f_small[r].cpu_us)
                for r in sorted(w_big) if r in w_small and r in f_big and r in f_small]

    alloc_bound = read_alloc_bound()
    allocs = ([s.extra["allocations_per_request"] for s in by_round(samples, ALLOC_CONFIG, small).values()]
              if who == "warden" else [])
    rows = [
        ("CPU per request ÷ floor+es256 (small tools/call, direct)", "≤ 1.10", 1.10, "le", ".2f",
         paired(samples, who, small, "floor+es256", small, lambda a, b: a.cpu_us / b.cpu_us)),
        ("throughput ÷ native chain (small tools/call, direct)", "≥ 1.25", 1.25, "ge", ".2f",
         paired(samples, who, small, "native", small, lambda a, b: a.rps / b.rps)),
        ("tools/list CPU filtered ÷ unfiltered (50 → 10 tools, direct)", "≤ 1.5", 1.5, "le", ".2f",
         paired(samples, who, "list/direct", f"{who}-unfiltered", "list/direct", lambda a, b: a.cpu_us / b.cpu_us)),
        ("16 KiB cost above the floor's own 16 KiB cost, CPU µs per request (direct)", "≤ 1 µs", 1.0, "le", ".1f",
         above_floor_16k()),
        ("the same for a 16 KiB call whose argument is code (escapes, non-ASCII), CPU µs per request", "(measured)",
         None, None, ".1f", above_floor_16k("call-code-16k/direct")),
        ("authorize line at info level, extra CPU µs per request (small, direct)", "≤ 5 µs", 5.0, "le", ".1f",
         paired(samples, f"{who}+info-log", small, who, small, lambda a, b: a.cpu_us - b.cpu_us)),
        ("… of which the kernel's (stime: the write of each line to stderr), µs per request", "(measured)",
         None, None, ".1f",
         paired(samples, f"{who}+info-log", small, who, small, lambda a, b: a.extra["sys_us"] - b.extra["sys_us"])),
        ("the same with Envoy's --log-path (its buffered file sink), extra CPU µs per request", "(measured)",
         None, None, ".1f",
         paired(samples, f"{who}+info-log-path", small, who, small, lambda a, b: a.cpu_us - b.cpu_us)),
        ("authorize record as filter state (`authorize_filter_state`, render-envoy's setting), extra CPU µs "
         "per request", "(measured)", None, None, ".1f",
         paired(samples, f"{who}+filter-state", small, who, small, lambda a, b: a.cpu_us - b.cpu_us)),
        ("allocations per warm request (small tools/call, direct)",
         "(measured)" if alloc_bound is None else f"≤ {alloc_bound:g} (recorded)", alloc_bound, "le", ".2f", allocs),
        ("RSS above the floor, MiB (small tools/call, direct, after the run)", "≤ 10 MiB", 10.0, "le", ".1f",
         paired(samples, who, small, "floor", small, lambda a, b: a.rss_mib - b.rss_mib)),
        (".wasm size, bytes", f"≤ 1 MiB ({MIB:,})", float(MIB), "le", ",.0f",
         [float(wasm_bytes)] if wasm_bytes else []),
        ("16 KiB minus small tools/call, CPU µs per request (direct)", "(measured; issue 7: ≤ 5 µs)", None, None, ".1f",
         paired(samples, who, big, who, small, lambda a, b: a.cpu_us - b.cpu_us)),
        ("log bytes written per request at info level (small, direct)", "(measured)", None, None, ".0f",
         [s.extra["log_bytes_per_request"] for s in by_round(samples, f"{who}+info-log", small).values()]),
    ]
    out = []
    for label, goal, bound, sense, fmt, values in rows:
        if not values:
            continue
        m = med(values)
        verdict = "" if bound is None else ("PASS" if (m <= bound if sense == "le" else m >= bound) else "MISS")
        out.append({"target": label, "goal": goal, "median": m, "values": values,
                    "text": spread(values, fmt), "verdict": verdict})
    return out


def cpu_steal() -> int:
    """Clock ticks stolen from this (virtual) machine by its host, all CPUs."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) if len(fields) > 8 else 0


def machine() -> dict:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    envoy_version = (run([ENVOY, "--version"]).strip().split("version:")[-1].strip()
                     if ENVOY.exists() else "absent")
    wrk_version = (subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
                   if shutil.which("wrk") else [])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "envoy": envoy_version,
        "wrk": wrk_version[0] if wrk_version else "unknown",
        "python": platform.python_version(),
    }


def git_head() -> str:
    try:
        sha = run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"]).strip()
        dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).strip()
        return sha + ("+dirty" if dirty else "")
    except BenchError:
        return "unknown"


def report(samples: list[Sample], configs: list[Config], meta_: dict) -> str:
    names = [c.name for c in configs]
    L = []
    L.append(f"# mcp-warden benchmark, {meta_['date']}")
    L.append("")
    L.append(f"Tree `{meta_['head']}`; baseline {meta_['baseline']}. Generated by `make bench` "
             f"(`bench/run.py`, method in `bench/README.md`). Figures are medians over {meta_['rounds']} "
             "interleaved rounds, with the range (min–max) in parentheses. Ratios are taken within a round. "
             "They hold for this machine and this run only: compare ratios, not absolute numbers.")
    L.append("")
    m = meta_["machine"]
    L.append(f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}; "
             f"Envoy {m['envoy']}; {m['wrk']}. Load average (1 min) {meta_['quiet']['loadavg_1min_before']:.2f} "
             f"before measuring and {meta_['quiet']['loadavg_1min_after']:.2f} after (the benchmark itself keeps "
             f"about 1.5 busy); CPU stolen by the hypervisor {meta_['quiet']['steal_percent']:.1f} %; measuring took "
             f"{meta_['measure_seconds'] / 60:.1f} min.")
    L.append("")
    L.append("## Targets (issue 23)")
    L.append("")
    L.append("Issue 23's goals (the first three are issue 7's, now with the revocation feed, the metrics and "
             "a five-rule policy on): all on the small `tools/call` with a direct response unless noted. "
             "The 16 KiB row subtracts the `floor`'s own 16 KiB cost (its 16 KiB minus small call, same "
             "round). Allocations come from the counting build (`warden-alloc-count`), the bound from "
             "`bench/alloc-bound.txt`.")
    L.append("")
    whos = [w for w in ("warden-baseline", "warden") if w in names]
    header = "| target | goal | " + " | ".join(
        "baseline `" + meta_["baseline_sha"][:9] + "`" if w == "warden-baseline" else f"warden `{meta_['head']}`"
        for w in whos) + " |"
    L.append(header)
    L.append("|---|---|" + "---|" * len(whos))
    wasm_bytes = meta_.get("wasm_bytes", {})
    table = {w: {t["target"]: t for t in targets(samples, w, wasm_bytes.get(w))} for w in whos}
    labels = []
    for w in reversed(whos):  # the current filter's rows first: it has them all, in order
        for t in table[w]:
            if t not in labels:
                labels.append(t)
    for label in labels:
        goal = next(table[w][label]["goal"] for w in whos if label in table[w])
        cells = []
        for w in whos:
            t = table[w].get(label)
            cells.append("–" if t is None else f"{t['text']} {('**' + t['verdict'] + '**') if t['verdict'] else ''}".strip())
        L.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")
    L.append("")
    for case in CASE_ORDER:
        # The counting build has a section of its own: its CPU is not comparable.
        present = [c for c in configs if case in c.cases and not c.counts_allocations]
        if not present:
            continue
        what, via = case.split("/")
        title = {"call-small": "small tools/call (207 B)", "call-16k": "16 KiB tools/call",
                 "call-code-16k": "16 KiB tools/call whose argument is code (escapes, non-ASCII)",
                 "list": "tools/list, 50 tools in the answer"}[what]
        L.append(f"## {title}, {'direct response' if via == 'direct' else 'real upstream'} (`{case}`)")
        L.append("")
        L.append("| configuration | req/s | × bare | CPU µs/request | × bare CPU | p99 ms | RSS MiB | load core busy |")
        L.append("|---|---|---|---|---|---|---|---|")
        bare = by_round(samples, "bare", case)
        for c in present:
            mine = by_round(samples, c.name, case)
            if not mine:
                continue
            s = list(mine.values())
            ratio = [mine[r].rps / bare[r].rps for r in mine if r in bare]
            cpu_ratio = [mine[r].cpu_us / bare[r].cpu_us for r in mine if r in bare]
            L.append(
                f"| {c.name} | {spread([x.rps for x in s], ',.0f')} | {spread(ratio, '.2f')} | "
                f"{spread([x.cpu_us for x in s], '.1f')} | {spread(cpu_ratio, '.2f')} | "
                f"{spread([x.p99_us / 1000 for x in s], '.2f')} | {med([x.rss_mib for x in s]):.0f} | "
                f"{med([x.load_core_busy for x in s]) * 100:.0f} % |")
        L.append("")
    alloc_rows = [(case, list(by_round(samples, ALLOC_CONFIG, case).values())) for case in ALLOC_CASES]
    alloc_rows = [(case, s) for case, s in alloc_rows if s]
    if alloc_rows:
        L.append(f"## Allocations per warm request (`{ALLOC_CONFIG}`)")
        L.append("")
        L.append(f"The filter built with `--features alloc-count` ({ALLOC_WASM.name}), same plugin configuration "
                 f"as `warden`: its global allocator counts `alloc`, `alloc_zeroed` and `realloc` (one each), and "
                 f"the root context's tick adds the count to the gauge `{ALLOC_GAUGE}`. Read after a tick before "
                 f"and after the measured run, divided by the requests completed. The counting build's CPU is "
                 f"shown for reference only and is in no comparison.")
        L.append("")
        L.append("| case | allocations per request | req/s | CPU µs/request (counting build, not compared) |")
        L.append("|---|---|---|---|")
        for case, s in alloc_rows:
            L.append(f"| `{case}` | {spread([x.extra['allocations_per_request'] for x in s], '.2f')} | "
                     f"{spread([x.rps for x in s], ',.0f')} | {spread([x.cpu_us for x in s], '.1f')} |")
        L.append("")
    L.append("## Wasm sizes")
    L.append("")
    L.append("| module | bytes |")
    L.append("|---|---|")
    for label, size in meta_["wasm_sizes"].items():
        L.append(f"| {label} | {size:,} |")
    L.append("")
    L.append("## Configurations")
    L.append("")
    for c in configs:
        L.append(f"- **{c.name}**: {c.describe}" + (f" (Envoy `-l {c.log_level}`)" if c.log_level != "warn" else ""))
    L.append("")
    L.append("## Method")
    L.append("")
    L.append(
        f"Each configuration is its own Envoy {m['envoy'].split('/')[1] if '/' in m['envoy'] else ''} process "
        f"(`--concurrency 1`, pinned to core {ENVOY_CORE} with `taskset`, `-l warn` unless noted, no access log), "
        f"all started before the first round from bootstraps with the same listener and HTTP settings as "
        f"`render-envoy`'s. wrk (1 thread, {CONNECTIONS} connections, HTTP/1.1 keep-alive), the upstream "
        f"(`bench-upstream`, one Tokio thread) and the harness share core {LOAD_CORE}. Every request carries "
        f"the same headers (`Authorization: Bearer` with an ES256 `at+jwt`, `MCP-Protocol-Version: "
        f"{PROTOCOL_VERSION}`, JSON content type and accept). Per round, cases in turn; within a case the "
        f"configurations in an order rotated by one each round. Each run: {meta_['warmup']} s warm-up "
        f"(not measured), then {meta_['duration']} s measured. CPU µs/request = Envoy's utime+stime "
        f"(`/proc/<pid>/stat`, all threads) over the measured run ÷ requests completed in it. p99 from "
        f"wrk `--latency`. RSS = VmRSS after the run. Any non-2xx answer or socket error fails the run; "
        f"for mcp-warden's filter its `requests_allowed` counter must grow by at least the requests "
        f"answered. \"load core busy\" is wrk + upstream CPU over the run: near 100 % means the load "
        f"side, not Envoy, limited throughput.")
    L.append("")
    L.append("- **bare** has Envoy's `buffer` filter before the router: without it Envoy sends a direct "
             "response as soon as it has the request head and, on HTTP/1.1, closes the connection because "
             "the body was never read, so bare Envoy would measure one TCP connection per request. Its cost "
             "is within noise on the upstream cases.")
    L.append("- **native**: Envoy 1.40's `envoy.filters.http.mcp` (`traffic_mode: REJECT_NO_MCP`, "
             "`max_request_body_size` 1 MiB like the filter's default) puts the JSON-RPC `method` and `params` "
             "in dynamic metadata; `envoy.filters.http.rbac` allows the same calls as the PPL policy (the "
             "listing methods, ten tools by `params.name`, never a `delete_` or `write_` tool, never a `sub` "
             "of the deny list); `jwt_authn` checks the same ES256 token (issuer, audience, local JWKS, "
             "`jwt_cache_config`), puts its payload in dynamic metadata and removes it. Envoy has "
             "no filter that filters a `tools/list` answer, so on tools/list the native chain does less work "
             "than mcp-warden (it returns all 50 tools).")
    L.append("- **floor** / **floor+es256** (`bench/floor`): hold the head, buffer the body, "
             "`serde_json::from_slice::<Value>`, read `method` and `params.name`. With ES256: the signature "
             "and `exp` only (no issuer, audience or policy), cached by token string.")
    L.append("- **warden**: the plugin configuration is the one `warden-token-service render-envoy` writes "
             "for the bench route (`bench/run.py`, `operator_config`), with the JWKS inline (`jwks_static`) "
             "instead of fetched; the route policy has five rules (`in` and `starts_with`: allow the listing "
             "methods; allow signed-in users the 10 tools; deny `delete_*`; deny `write_*`; deny three users "
             "not the caller), so a `tools/list` answer is filtered from 50 tools to 10. The filter is held to the same checks "
             "before measuring: a request without a token gets 401, a `delete_file` call gets 403, the "
             "filtered list has exactly the ten allowed tools.")
    L.append("- **real upstream**: `bench-upstream` (`bench/tools`, hyper on a single Tokio thread) answers "
             "every POST with the same JSON-RPC result as the direct response. It shares core 1 with wrk.")
    L.append("")
    if meta_.get("notes"):
        L.append("## Notes")
        L.append("")
        for n in meta_["notes"]:
            L.append(f"- {n}")
        L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------
# The token service (issue 18): refresh grants, upstream-token look-ups with a warm TI, and
# sign-ins without the password check, on PostgreSQL and on SQLite with the same load.

TOKEN_SERVICE_RELEASE = TARGET / "release/warden-token-service"
OAUTH_PROVIDER_BIN = TARGET / "release/demo-oauth-provider"
TOKEN_LOAD_BIN = TARGET / "release/bench-token"
TOKEN_CLIENTS = 16
PG_ADMIN = ("127.0.0.1", 5432, "postgres")
BENCH_USER = "bench@example.com"
BENCH_PASSWORD = "bench-password-not-a-secret"
PROVIDER_CLIENT = ("warden-demo", "warden-demo-secret")
PROVIDER_USER = ("alice", "alice-password")
BENCH_REDIRECT = "http://127.0.0.1:9/callback"
# Sign-ins start at `GET /authorize`, which draws from the per-address budget of
# `pending_flows.rate_limit_per_minute` (the bench config lifts it to its maximum, 10000 a
# minute: a burst of 10000). Setup, warm-up and measured sign-ins stay below it.
MAX_SIGN_INS = 9000
# Internal calls are single-use: the service remembers each nonce for up to two clock windows
# (2 x 60 s) and at most 200,000 of them, so look-ups per token service process stay below.
MAX_LOOKUPS = 150_000
TOKEN_GOALS = {"lookup_per_core": 5000.0, "refresh_p99_ms": 20.0}


def wait_http(port: int, path: str, proc: subprocess.Popen, log: Path, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{log.name}: the process exited ({proc.returncode}):\n{tail(log)}")
        try:
            status, _ = http_get(port, path, timeout=1)
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"nothing answered on 127.0.0.1:{port}{path} after {timeout:.0f} s:\n{tail(log)}")


def pg_answers() -> str | None:
    """None when a PostgreSQL server answers at 127.0.0.1:5432, else why not."""
    try:
        with socket.create_connection(PG_ADMIN[:2], timeout=2):
            pass
    except OSError as e:
        return f"no PostgreSQL server answers at {PG_ADMIN[0]}:{PG_ADMIN[1]} ({e})"
    if not shutil.which("psql"):
        raise BenchError("a PostgreSQL server answers at 127.0.0.1:5432 but `psql` is missing "
                         "(apt-get install postgresql-client): it creates and drops the bench database")
    return None


def psql(sql: str):
    run(["psql", "-h", PG_ADMIN[0], "-p", str(PG_ADMIN[1]), "-U", PG_ADMIN[2], "-d", "postgres",
         "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])


def token_config(work: Path, backend: str, pg_url: str | None, password_hash: str, ports: dict,
                 provider_port: int) -> dict:
    storage = ({"postgres": {"url": pg_url}, "encryption_key_file": str(work / "encryption-key")}
               if backend == "postgres" else {"sqlite": str(work / "warden.db")})
    issuer = f"http://127.0.0.1:{ports['public']}"
    provider = f"http://127.0.0.1:{provider_port}"
    return {
        "authorization_server": {
            "issuer": issuer,
            "listen": issuer.removeprefix("http://"),
            "internal_listen": f"127.0.0.1:{ports['internal']}",
            "internal_credential_file": str(work / "internal-credential"),
            "signing_key": {"file": str(work / "signing-key.json"), "alg": "ES256"},
            "pending_flows": {"rate_limit_per_minute": 10000},
        },
        "storage": storage,
        "identity_provider": {"local": {"users": [
            {"email": BENCH_USER, "name": "Bench User", "password_hash": password_hash, "groups": ["bench"]}]}},
        "clients": [{"client_id": "bench", "client_name": "Bench", "redirect_uris": [BENCH_REDIRECT],
                     "skip_consent": True}],
        "envoy": {"listen": f"127.0.0.1:{ports['envoy']}", "admin": f"127.0.0.1:{ports['admin']}"},
        "routes": [{
            "name": "gh",
            "from": f"http://127.0.0.1:{ports['envoy']}",
            "prefix": "/gh",
            "to": f"http://127.0.0.1:{ports['unused']}/mcp",
            "mcp": {"server": {"upstream_oauth2": {
                "client_id": PROVIDER_CLIENT[0], "client_secret": PROVIDER_CLIENT[1], "scopes": ["repo"],
                "endpoint": {"auth_url": f"{provider}/authorize", "token_url": f"{provider}/token"}}}},
            "policy": {"allow": {"and": [{"authenticated_user": True}]}},
        }],
    }


def token_backend_run(work: Path, backend: str, pg_url: str | None, password_hash: str,
                      provider_port: int, warmup: int, duration: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    ports = {k: free_port() for k in ("public", "internal", "envoy", "admin", "unused")}
    config = token_config(work, backend, pg_url, password_hash, ports, provider_port)
    (work / "warden.yaml").write_text(json.dumps(config, indent=2))
    log = work / "token-service.log"
    # The token service alone on core 0 (its Tokio workers and blocking pool follow the
    # affinity); the load generator and the provider on core 1. PostgreSQL is not ours: its
    # backends run wherever the kernel puts them, and their CPU is reported.
    svc = spawn(["taskset", "-c", ENVOY_CORE, TOKEN_SERVICE_RELEASE, "serve", "--config", work / "warden.yaml"],
                log)
    try:
        wait_http(ports["public"], "/.well-known/oauth-authorization-server", svc, log)
        argv = [
            "taskset", "-c", LOAD_CORE, TOKEN_LOAD_BIN,
            "--issuer", f"http://127.0.0.1:{ports['public']}",
            "--internal", f"127.0.0.1:{ports['internal']}",
            "--credential-file", work / "internal-credential",
            "--resource", f"http://127.0.0.1:{ports['envoy']}/gh",
            "--route", "gh", "--client-id", "bench", "--redirect-uri", BENCH_REDIRECT,
            "--email", BENCH_USER, "--password", BENCH_PASSWORD,
            "--upstream-user", PROVIDER_USER[0], "--upstream-password", PROVIDER_USER[1],
            "--clients", str(TOKEN_CLIENTS), "--warmup", str(warmup), "--duration", str(duration),
            "--max-requests", str(MAX_LOOKUPS), "--max-signins", str(MAX_SIGN_INS - TOKEN_CLIENTS),
            "--server-pid", str(svc.pid),
        ]
        if backend == "postgres":
            argv += ["--cpu-of-comm", "postgres"]
        started, others_before = time.monotonic(), others_cpu_seconds("postgres")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120 + 4 * (warmup + duration))
        (work / "bench-token.log").write_text(out.stderr)
        if out.returncode != 0:
            raise BenchError(f"bench-token on {backend} failed ({out.returncode}):\n{out.stderr}\n"
                             f"token service log:\n{tail(log)}")
        result = json.loads(out.stdout)
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        result["others_busy"] = (others_cpu_seconds("postgres") - others_before) / result["wall_seconds"]
        result["server_rss_mib"] = rss_mib(svc.pid)
        return result
    finally:
        svc.terminate()
        try:
            svc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            svc.kill()
            svc.wait()
        CHILDREN.remove(svc)


def token_backend_quiet(work: Path, backend: str, pg_url: str | None, password_hash: str,
                        provider_port: int, warmup: int, duration: int, notes: list) -> dict:
    """`token_backend_run`, again (up to RETRIES times, fresh state each time) while other
    processes used more than DISTURBED of a core during it."""
    best = None
    for attempt in range(RETRIES + 1):
        if pg_url:
            db = pg_url.rsplit("/", 1)[1]
            psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            psql(f"CREATE DATABASE {db}")
        shutil.rmtree(work, ignore_errors=True)
        res = token_backend_run(work, backend, pg_url, password_hash, provider_port, warmup, duration)
        res["attempt"] = attempt + 1
        print(f"  {backend}: " + ", ".join(f"{k} {v['rps']:,.0f}/s p99 {v['p99_ms']:.1f} ms"
                                           for k, v in res["phases"].items())
              + f"; others {res['others_busy'] * 100:.0f} %", flush=True)
        if res["others_busy"] <= DISTURBED:
            return res
        if best is None or res["others_busy"] < best["others_busy"]:
            best = res
        if attempt < RETRIES:
            print(f"  {backend}: disturbed (other processes used {res['others_busy'] * 100:.0f} % of a core); "
                  "again ...", flush=True)
            wait_for_other_benches() or wait_for_quiet()
    notes.append(f"{backend}: other processes still used {best['others_busy'] * 100:.0f} % of a core "
                 f"after {RETRIES} retries (the least disturbed attempt, {best['attempt']}, is reported)")
    return best


def token_service_bench(work: Path, warmup: int, duration: int) -> dict:
    for path in (TOKEN_SERVICE_RELEASE, OAUTH_PROVIDER_BIN, TOKEN_LOAD_BIN):
        if not path.exists():
            raise BenchError(f"{path} is missing: run `make bench-build` first")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    notes = []
    password_hash = run([TOKEN_SERVICE_RELEASE, "hash-password"], input=BENCH_PASSWORD + "\n").strip()
    provider_port = free_port()
    provider_log = work / "provider.log"
    provider = spawn(["taskset", "-c", LOAD_CORE, OAUTH_PROVIDER_BIN, "--listen", f"127.0.0.1:{provider_port}",
                      "--client-id", PROVIDER_CLIENT[0], "--client-secret", PROVIDER_CLIENT[1],
                      "--access-ttl", "86400", "--user", ":".join(PROVIDER_USER)], provider_log)
    wait_http(provider_port, "/.well-known/openid-configuration", provider, provider_log)
    results = {}
    why_not = pg_answers()
    if why_not:
        notes.append(f"PostgreSQL skipped: {why_not}")
        print(f"NOTE: token service on PostgreSQL skipped: {why_not}", flush=True)
        results["postgres"] = None
    else:
        db = f"warden_bench_{os.getpid()}"
        try:
            url = f"postgres://{PG_ADMIN[2]}@{PG_ADMIN[0]}:{PG_ADMIN[1]}/{db}"
            print(f"token service on PostgreSQL (database {db}) ...", flush=True)
            results["postgres"] = token_backend_quiet(work / "postgres", "postgres", url, password_hash,
                                                      provider_port, warmup, duration, notes)
        finally:
            psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    print("token service on SQLite ...", flush=True)
    results["sqlite"] = token_backend_quiet(work / "sqlite", "sqlite", None, password_hash, provider_port,
                                            warmup, duration, notes)
    provider.terminate()
    provider.wait(timeout=10)
    CHILDREN.remove(provider)
    return {"clients": TOKEN_CLIENTS, "warmup": warmup, "duration": duration, "backends": results,
            "goals": TOKEN_GOALS, "notes": notes}


def token_goal_lines(tok: dict) -> list[str]:
    pg = tok["backends"].get("postgres")
    if not pg:
        return ["- goals not checked: no PostgreSQL run"]
    look, ref = pg["phases"]["lookup"], pg["phases"]["refresh"]
    ok = lambda b: "PASS" if b else "MISS"  # noqa: E731
    return [
        f"- upstream-token look-ups per token-service core, PostgreSQL: **{look['per_server_core']:,.0f}/s** "
        f"(goal ≥ {TOKEN_GOALS['lookup_per_core']:,.0f}): {ok(look['per_server_core'] >= TOKEN_GOALS['lookup_per_core'])}",
        f"- refresh p99 with {tok['clients']} clients, PostgreSQL: **{ref['p99_ms']:.1f} ms** "
        f"(goal ≤ {TOKEN_GOALS['refresh_p99_ms']:.0f} ms): {ok(ref['p99_ms'] <= TOKEN_GOALS['refresh_p99_ms'])}",
    ]


def token_report(tok: dict) -> list[str]:
    L = ["## Token service (issue 18)", ""]
    L.append(f"The release token service alone on core 0 (`taskset`), `bench-token` (`bench/tools`, one Tokio "
             f"thread) on core 1 with {tok['clients']} concurrent clients, the same load on each backend: "
             f"per phase {tok['warmup']} s warm-up (not measured), then {tok['duration']} s measured. "
             "PostgreSQL 127.0.0.1:5432 (a database of the run's own, dropped afterwards) is not pinned: its "
             "backends' CPU is given separately. Every request must succeed.")
    L.append("")
    L.extend(token_goal_lines(tok))
    L.append("")
    L.append("| backend | phase | req/s | p50 ms | p99 ms | token service CPU µs/req | req/s per token-service core "
             "| PostgreSQL CPU µs/req | load generator core busy |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    names = {"refresh": "refresh grant", "lookup": "upstream-token look-up (warm)",
             "signin": "sign-in without password (session → /authorize → code → /token)"}
    for backend, res in tok["backends"].items():
        if res is None:
            L.append(f"| {backend} | skipped: no server | | | | | | | |")
            continue
        for phase in ("refresh", "lookup", "signin"):
            p = res["phases"][phase]
            pg_cpu = f"{p['comm_cpu_s'] * 1e6 / p['requests']:.0f}" if backend == "postgres" else "–"
            L.append(f"| {backend} | {names.get(phase, phase)} | {p['rps']:,.0f} | {p['p50_ms']:.2f} | "
                     f"{p['p99_ms']:.2f} | {p['server_cpu_us_per_request']:.0f} | {p['per_server_core']:,.0f} | "
                     f"{pg_cpu} | {100 * p['loadgen_cpu_s'] / p['seconds']:.0f} % |")
    L.append("")
    first = {b: r["first_sign_in_ms"] for b, r in tok["backends"].items() if r}
    L.append("The first sign-in of the setup (the gateway's login form with an Argon2id check at the default "
             "cost, the upstream provider's login and consent, the code exchange) took "
             + ", ".join(f"{ms:.0f} ms on {b}" for b, ms in first.items())
             + ". The measured sign-ins skip the password: the browser's session cookie makes `GET /authorize` "
             "answer the code at once (the client skips consent, the upstream account is connected), then the "
             "code is exchanged with its PKCE verifier.")
    L.append("")
    L.append("Other processes (PostgreSQL excepted) used "
             + ", ".join(f"{100 * r['others_busy']:.0f} % of a core during the {b} run (attempt {r['attempt']})"
                         for b, r in tok["backends"].items() if r) + ".")
    for n in tok.get("notes", []):
        L.append(f"- {n}")
    L.append("")
    return L


# ---------------------------------------------------------------------------------------------

LOCK_FILE = Path("/tmp/mcp-warden-bench.lock")


def other_benches() -> list[str]:
    """Other harnesses on this machine (any worktree) that are measuring: a `bench/run.py` with
    child processes. One waiting for the lock has none yet."""
    harnesses, parents = set(), {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if b"python" in argv[0] and any(a.endswith(b"bench/run.py") for a in argv[1:3]):
            harnesses.add(entry.name)
        parents[entry.name] = stat[stat.rindex(")") + 2:].split()[1]
    return sorted({ppid for ppid in parents.values() if ppid in harnesses})


def wait_for_other_benches() -> bool:
    """Waits while another harness measures; returns whether it waited."""
    others = other_benches()
    if not others:
        return False
    print(f"another benchmark is measuring (pid {', '.join(others)}); waiting for it to end ...", flush=True)
    while other_benches():
        time.sleep(2)
    return True


def wait_for_quiet(limit: float = 120):
    """Before running a disturbed run again: waits (at most `limit` s) for a second in which
    other processes use less than DISTURBED of a core."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = others_cpu_seconds()
        time.sleep(1)
        if others_cpu_seconds() - before <= DISTURBED:
            return
    print(f"the machine stayed busy for {limit:.0f} s; going on", flush=True)


def one_bench_at_a_time() -> int:
    """Two benchmarks at once would measure each other: a lock file serialises harnesses, and
    harnesses that predate the lock are waited for."""
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another benchmark holds {LOCK_FILE} ({LOCK_FILE.read_text().strip()}); waiting ...", flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} in {ROOT}\n".encode())
    wait_for_other_benches()
    return fd


def ensure_wrk():
    if shutil.which("wrk"):
        return
    print("wrk is missing: installing it with apt-get ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, stdout=subprocess.DEVNULL)
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed and apt-get could not install it")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["full", "smoke", "token"])
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--duration", type=int, default=None, help="measured seconds per run")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up seconds per run (not measured)")
    ap.add_argument("--baseline", default=os.environ.get("BENCH_BASELINE", DEFAULT_BASELINE))
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--no-token", action="store_true",
                    help="full: skip the token service phase (e.g. a quick try of the Envoy rounds)")
    ap.add_argument("--only", default="",
                    help="full: measure only these configurations (comma-separated names), for a quick try; "
                         "targets whose configurations are missing are left out of the report")
    args = ap.parse_args()
    smoke = args.mode == "smoke"
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    if args.only and (smoke or not only
                      or args.out.resolve().is_relative_to(RESULTS_DIR.resolve())):
        raise BenchError("--only is for a quick try of `full` (its targets are partial): name at least one "
                         "configuration and give --out a directory outside bench/results")
    env_int = lambda name, default: int(os.environ.get(name, default))  # noqa: E731
    rounds = args.rounds or env_int("BENCH_ROUNDS", 3)
    duration = args.duration or env_int("BENCH_DURATION", 5 if smoke else 3)
    warmup = args.warmup if args.warmup is not None else env_int("BENCH_WARMUP", 1)

    signal.signal(signal.SIGTERM, _on_signal)
    lock = one_bench_at_a_time()  # noqa: F841 (held until exit)
    if (os.cpu_count() or 1) < 2:
        raise BenchError("the harness needs 2 cores: Envoy on core 0, the load on core 1")
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    token_duration = env_int("BENCH_TOKEN_DURATION", 5)
    if args.mode == "token":
        return token_only(args.out, warmup, token_duration)
    for path in (ENVOY, TOKEN_SERVICE, WARDEN_WASM, ALLOC_WASM, FLOOR_WASM, FIXTURES_BIN, UPSTREAM_BIN):
        if not path.exists():
            raise BenchError(f"{path} is missing: run `make tools build bench-build` first")
    ensure_wrk()

    notes = []
    baseline, baseline_sha = None, ""
    if not smoke and not args.no_baseline:
        baseline, info = build_baseline(args.baseline)
        if baseline is None:
            notes.append(info)
            print(f"NOTE: {info}", flush=True)
        else:
            baseline_sha = info
            same = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", baseline_sha, "--", "filter", "core"])
            if same.returncode == 0:
                notes.append(f"the baseline's `filter/` and `core/` are identical to this tree's: warden and "
                             f"warden-baseline differ only by noise in this run")

    work = TARGET / f"bench-run-{args.mode}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fx = fixtures(work)
    (work / "fixtures.json").write_text(json.dumps(fx, indent=2))
    token = fx["token"]
    upstream_port = free_port()
    plugin = rendered_plugin_config(work, upstream_port, fx["jwks"])
    (work / "plugin-config.json").write_text(json.dumps(plugin, indent=2))
    (work / "call.json").write_text(CALL_RESULT)
    (work / "list.json").write_text(LIST_RESULT)

    configs = configurations(args.mode, fx["jwks"], fx["jwk"], plugin, baseline, baseline_sha)
    if only:
        unknown = only - {c.name for c in configs}
        if unknown:
            raise BenchError(f"--only: no configuration named {', '.join(sorted(unknown))}")
        configs = [c for c in configs if c.name in only]
        notes.append(f"only these configurations were measured (`--only`): {args.only}")
    upstream = spawn(["taskset", "-c", LOAD_CORE, UPSTREAM_BIN, "--listen", f"127.0.0.1:{upstream_port}",
                      "--call", work / "call.json", "--list", work / "list.json"], work / "upstream.log")
    for i, cfg in enumerate(configs):
        start_envoy(cfg, work, upstream_port, base_id=40 + i)
    for cfg in configs:
        wait_ready(cfg)
        probe(cfg, token)
        print(f"ready: {cfg.name:28} port {cfg.port}  (RSS {rss_mib(cfg.proc.pid):.0f} MiB)", flush=True)

    scripts = {name: write_wrk_script(work, case, token) for name, case in CASES.items()}
    runs_per_round = sum(len(c.cases) for c in configs)
    eta = rounds * runs_per_round * (warmup + duration + 0.6)
    print(f"{rounds} rounds x {runs_per_round} runs x ({warmup} s warm-up + {duration} s): about "
          f"{eta / 60:.1f} min", flush=True)

    samples: list[Sample] = []
    load_before, steal_before = os.getloadavg()[0], cpu_steal()
    started = time.monotonic()
    for rnd in range(rounds):
        for case_name in CASE_ORDER:
            present = [c for c in configs if case_name in c.cases]
            if not present:
                continue
            shift = rnd % len(present)
            for cfg in present[shift:] + present[:shift]:
                attempt = 0
                while True:
                    s = measure(cfg, CASES[case_name], rnd, scripts[case_name], warmup, duration, upstream)
                    s.extra["attempt"] = attempt + 1
                    if s.extra["others_busy"] <= DISTURBED:
                        break
                    print(f"round {rnd + 1}/{rounds} {case_name:18} {cfg.name:28} disturbed: other processes "
                          f"used {s.extra['others_busy'] * 100:.0f} % of a core", flush=True)
                    if wait_for_other_benches():
                        continue  # not this run's fault: it does not count as a retry
                    attempt += 1
                    if attempt > RETRIES:
                        break
                    wait_for_quiet()
                if s.extra["others_busy"] > DISTURBED:
                    notes.append(f"{cfg.name} {case_name} round {rnd + 1}: other processes still used "
                                 f"{s.extra['others_busy'] * 100:.0f} % of a core after {RETRIES} retries")
                samples.append(s)
                print(f"round {rnd + 1}/{rounds} {case_name:18} {cfg.name:28} {s.rps:9,.0f} req/s "
                      f"{s.cpu_us:7.1f} µs/req  p99 {s.p99_us / 1000:6.2f} ms  RSS {s.rss_mib:4.0f} MiB  "
                      f"load core {s.load_core_busy * 100:3.0f} %  others {s.extra['others_busy'] * 100:3.0f} %",
                      flush=True)
    elapsed = time.monotonic() - started
    quiet = {"loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0],
             "steal_percent": 100 * (cpu_steal() - steal_before) / (elapsed * os.sysconf("SC_CLK_TCK") * 2)}

    if smoke:
        ratios = paired(samples, "warden", "call-small/direct", "floor+es256", "call-small/direct",
                        lambda a, b: a.cpu_us / b.cpu_us)
        bound = read_bound()
        ratio = med(ratios)
        print(f"\nsmoke: CPU per request warden ÷ floor+es256 = {ratio:.2f} "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); bound {bound:.2f} ({SMOKE_BOUND_FILE.name})")
        for name in sorted({s.config for s in samples
                            if s.config.startswith(("variant-", "warden-route", "warden+ti"))}):
            vr = paired(samples, name, "call-small/direct", "floor+es256", "call-small/direct",
                        lambda a, b: a.cpu_us / b.cpu_us)
            print(f"       {name} ÷ floor+es256 = {med(vr):.2f} (rounds: {', '.join(f'{r:.2f}' for r in vr)})")
        allocs = [s.extra["allocations_per_request"]
                  for s in by_round(samples, ALLOC_CONFIG, "call-small/direct").values()]
        alloc_bound = read_alloc_bound()
        alloc = med(allocs)
        print(f"smoke: allocations per warm request ({ALLOC_CONFIG}) = {alloc:.2f} "
              f"(rounds: {', '.join(f'{a:.2f}' for a in allocs)}); "
              + (f"bound {alloc_bound:g} ({ALLOC_BOUND_FILE.name})" if alloc_bound is not None
                 else f"no bound recorded in {ALLOC_BOUND_FILE.name}"))
        for note in notes:
            print(f"note: {note}")
        failed = False
        if ratio > bound:
            print(f"FAIL: the ratio {ratio:.2f} exceeds the recorded bound {bound:.2f}", file=sys.stderr)
            failed = True
        if alloc_bound is not None and not alloc <= alloc_bound:
            print(f"FAIL: {alloc:.2f} allocations per request exceed the recorded {alloc_bound:g} "
                  f"({ALLOC_BOUND_FILE.name})", file=sys.stderr)
            failed = True
        if failed:
            return 1
        print("OK")
        return 0

    # The token service phase (issue 18): the Envoys are done, so they are stopped first.
    for cfg in configs:
        cfg.proc.terminate()
    for cfg in configs:
        cfg.proc.wait(timeout=10)
    tok = None if args.no_token else token_service_bench(work / "token-service", warmup, token_duration)
    if tok is None:
        notes.append("the token service phase was skipped (`--no-token`)")

    today = datetime.date.today().isoformat()
    sizes = {"warden_filter.wasm (this tree)": WARDEN_WASM.stat().st_size,
             "warden_bench_floor.wasm": FLOOR_WASM.stat().st_size,
             f"{ALLOC_WASM.name} (this tree, counting build; not the product)": ALLOC_WASM.stat().st_size}
    wasm_bytes = {"warden": WARDEN_WASM.stat().st_size}
    if baseline is not None:
        sizes[f"warden_filter.wasm (baseline {baseline_sha[:9]})"] = baseline.stat().st_size
        wasm_bytes["warden-baseline"] = baseline.stat().st_size
    meta_ = {
        "date": today, "head": git_head(), "rounds": rounds, "duration": duration, "warmup": warmup,
        "connections": CONNECTIONS, "baseline": f"`{args.baseline}` ({baseline_sha[:12]})" if baseline else "none",
        "baseline_sha": baseline_sha, "machine": machine(), "wasm_sizes": sizes, "wasm_bytes": wasm_bytes,
        "notes": notes,
        "measure_seconds": round(elapsed), "quiet": quiet,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    md = report(samples, configs, meta_) + ("\n" + "\n".join(token_report(tok)) if tok else "")
    (args.out / f"{today}.md").write_text(md + "\n")
    raw = {"meta": meta_, "configurations": {c.name: {"describe": c.describe, "cases": c.cases,
                                                      "log_level": c.log_level} for c in configs},
           "targets": {w: targets(samples, w, meta_["wasm_bytes"].get(w)) for w in ("warden", "warden-baseline")
                       if any(s.config == w for s in samples)},
           "token_service": tok,
           "samples": [s.__dict__ for s in samples]}
    samples_json = ",\n".join("  " + json.dumps(x, separators=(",", ":")) for x in raw.pop("samples"))
    head = json.dumps(raw, indent=1)
    (args.out / f"{today}.json").write_text(head[:-2] + ',\n "samples": [\n' + samples_json + "\n ]\n}\n")
    print("\n" + md)
    print(f"\nwrote {args.out / (today + '.md')} and .json (measuring took {elapsed / 60:.1f} min)")
    return 0


def token_only(out: Path, warmup: int, duration: int) -> int:
    """`bench/run.py token`: only the token service phase; writes bench/results/<date>-token.md
    and .json."""
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    tok = token_service_bench(TARGET / "bench-run-token", warmup, duration)
    today = datetime.date.today().isoformat()
    tok["meta"] = {"date": today, "head": git_head(), "machine": machine(),
                   "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0],
                   "measure_seconds": round(time.monotonic() - started)}
    m = tok["meta"]["machine"]
    md = [f"# mcp-warden token service benchmark, {today}", "",
          f"Tree `{tok['meta']['head']}`. Generated by `bench/run.py token` (method in `bench/README.md`; "
          f"`make bench` runs the same phase after the Envoy rounds). Machine: {m['nproc']} CPUs ({m['cpu']}), "
          f"{m['memory_gib']} GiB, Linux {m['kernel']}. Load average (1 min) {load_before:.2f} before.", ""]
    md += token_report(tok)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{today}-token.md").write_text("\n".join(md) + "\n")
    (out / f"{today}-token.json").write_text(json.dumps(tok, indent=1) + "\n")
    print("\n" + "\n".join(md))
    print(f"\nwrote {out / (today + '-token.md')} and .json")
    return 0


def read_bound() -> float:
    for line in SMOKE_BOUND_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return float(line)
    raise BenchError(f"{SMOKE_BOUND_FILE} holds no bound")


if __name__ == "__main__":
    try:
        code = main()
    except BenchError as e:
        print(f"\nbench: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        code = 130
    finally:
        stop_children()
    sys.exit(code)
