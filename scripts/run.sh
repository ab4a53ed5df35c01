#!/usr/bin/env bash
# Starts the demo stack on 127.0.0.1 and stops all of it on Ctrl-C. Used by `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."

TS=target/debug/warden-token-service
DEMO=target/debug/demo-mcp-server
PROVIDER=target/debug/demo-oauth-provider
APP=target/debug/demo-mcp-app
ENVOY=.venv/bin/envoy
WASM=target/wasm32-wasip1/release/warden_filter.wasm
mkdir -p var

config_args=()
if [[ -n "${WARDEN_CONFIG:-}" ]]; then
  config_args=(--config "$WARDEN_CONFIG")
  "$TS" check-config "${config_args[@]}"
fi

"$TS" render-envoy "${config_args[@]}" --wasm "$WASM" > var/envoy.yaml

pids=()
stopping=0
stop() {
  stopping=1
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$DEMO" --listen 127.0.0.1:9200 > var/demo-mcp-server.log 2>&1 & pids+=($!)
if [[ -z "${WARDEN_CONFIG:-}" ]]; then
  # The default config's second route: an OAuth provider (a stand-in for GitHub) and an MCP
  # server that wants the user's token from it.
  "$PROVIDER" --listen 127.0.0.1:9300 \
    --redirect-uri "$("$TS" describe --what upstream-callback)" > var/demo-oauth-provider.log 2>&1 & pids+=($!)
  "$DEMO" --listen 127.0.0.1:9201 --require-bearer-introspect http://127.0.0.1:9300/introspect \
    > var/upstream-demo-mcp-server.log 2>&1 & pids+=($!)
  # The default config's web app route (`mcp: client`).
  "$APP" --listen 127.0.0.1:9210 --gateway http://127.0.0.1:9000 --app-url http://127.0.0.1:9000/app \
    > var/demo-mcp-app.log 2>&1 & pids+=($!)
fi
"$TS" serve "${config_args[@]}" > var/token-service.log 2>&1 & pids+=($!)

wait_for() { # url name logfile
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not become ready; its log ($3):"; tail -n 30 "$3"; exit 1
}
wait_for http://127.0.0.1:9200/healthz "demo MCP server" var/demo-mcp-server.log
if [[ -z "${WARDEN_CONFIG:-}" ]]; then
  wait_for http://127.0.0.1:9300/healthz "demo OAuth provider" var/demo-oauth-provider.log
  wait_for http://127.0.0.1:9201/healthz "upstream demo MCP server" var/upstream-demo-mcp-server.log
  wait_for http://127.0.0.1:9210/healthz "demo MCP app" var/demo-mcp-app.log
fi
wait_for "$("$TS" describe "${config_args[@]}" --what issuer)/readyz" "token service" var/token-service.log
# The filter signs its calls to the token service's internal listener with the credential the
# token service created at its first start. It reaches Envoy through the environment, never
# its configuration or command line (Envoy's admin interface would show it).
credential_file=$("$TS" describe "${config_args[@]}" --what internal-credential-file)
if [[ -n "$credential_file" ]]; then
  MCP_WARDEN_INTERNAL_CREDENTIAL=$(<"$credential_file")
  export MCP_WARDEN_INTERNAL_CREDENTIAL
fi
"$ENVOY" -c var/envoy.yaml --concurrency 2 -l warn --base-id 9000 > var/envoy.log 2>&1 & pids+=($!)
wait_for "http://$("$TS" describe "${config_args[@]}" --what envoy-admin)/ready" "Envoy" var/envoy.log

echo
echo "mcp-warden is running (logs in var/). Give your MCP client this URL:"
"$TS" describe "${config_args[@]}" --what mcp-urls | sed 's/^/    /'
if [[ -z "${WARDEN_CONFIG:-}" ]]; then
  echo "Sign in as the demo user:  email demo@example.com   password warden-demo"
  echo "The /upstream-demo server also asks you to connect your account at the demo OAuth"
  echo "provider (http://127.0.0.1:9300):  user alice   password alice-password"
  echo "The demo MCP app (an mcp: client route) is at http://127.0.0.1:9000/app/ in a browser."
fi
echo "Press Ctrl-C to stop."
wait -n "${pids[@]}" || true
if [[ $stopping == 0 ]]; then
  echo "a process exited unexpectedly; see var/*.log"
fi
