#!/usr/bin/env bash
# Starts Azurite's blob service (npm package `azurite`, installed under
# ~/.cache/lakescore/node when missing) on a free loopback port, in memory, and creates the
# container the tests use. Prints shell lines to eval:
#   export LAKESCORE_TEST_AZURITE_BLOB=http://127.0.0.1:PORT/devstoreaccount1
#   export LAKESCORE_TEST_AZURITE_PID=PID
# `azurite-test.sh stop PID` stops it.
set -euo pipefail
AZURITE_VERSION=3.37.0
NODE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/lakescore/node
PY=${LAKESCORE_TEST_PYTHON:-${XDG_CACHE_HOME:-$HOME/.cache}/lakescore/venv/bin/python}
log() { echo "azurite-test: $*" >&2; }

if [ "${1:-}" = stop ]; then
    # Azurite does not always exit on SIGTERM; give it a moment, then SIGKILL.
    kill "$2" 2>/dev/null || exit 0
    for _ in 1 2 3 4 5 6; do
        kill -0 "$2" 2>/dev/null || exit 0
        sleep 0.5
    done
    kill -9 "$2" 2>/dev/null || true
    exit 0
fi

bin=$NODE_DIR/node_modules/.bin/azurite-blob
if [ ! -x "$bin" ] || [ "$(cat "$NODE_DIR/.version" 2>/dev/null)" != "$AZURITE_VERSION" ]; then
    command -v npm >/dev/null 2>&1 || { log "npm is needed to install azurite"; exit 1; }
    log "npm install azurite@$AZURITE_VERSION into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2)
    echo "$AZURITE_VERSION" >"$NODE_DIR/.version"
fi

port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
logfile=$(mktemp -t lakescore-azurite.XXXXXX.log)
"$bin" --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence --skipApiVersionCheck --silent >"$logfile" 2>&1 &
pid=$!
endpoint=http://127.0.0.1:$port/devstoreaccount1
# Azurite's development account and key are public, documented defaults.
conn="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=$endpoint;"
for _ in $(seq 1 60); do
    if "$PY" - "$conn" >/dev/null 2>&1 <<'PYEOF'
import sys
from azure.storage.blob import BlobServiceClient
from azure.core.exceptions import ResourceExistsError
client = BlobServiceClient.from_connection_string(sys.argv[1])
try:
    client.create_container("lakescore-test")
except ResourceExistsError:
    pass
PYEOF
    then
        log "Azurite blob service up at $endpoint (pid $pid)"
        echo "export LAKESCORE_TEST_AZURITE_BLOB=$endpoint"
        echo "export LAKESCORE_TEST_AZURITE_PID=$pid"
        exit 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
done
log "Azurite did not come up; its log:"
cat "$logfile" >&2
kill "$pid" 2>/dev/null || true
exit 1
