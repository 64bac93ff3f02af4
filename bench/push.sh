#!/usr/bin/env bash
# Push benchmark: galley vs `skopeo copy` of the same OCI layout to a local registry
# (Debian's docker-registry, distribution 2.8), then a re-push after a small app change.
#
#   bench/push.sh                 # 3 GiB of random layers (torch-sized)
#   SIZES_MB="512 256" bench/push.sh
#
# Layers are random (incompressible) data in gzip members at level 0, so generating
# them is fast and neither tool has anything to recompress. Each tool pushes to its
# own repository on one registry; the layout is read once beforehand so both start
# with it in the page cache. Needs: cargo, python3, docker-registry, skopeo.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES_MB=${SIZES_MB:-"1536 1024 512"}
WORK=$(mktemp -d /tmp/galley-bench.XXXXXX)
REGISTRY_PID=
cleanup() {
    if [ -n "$REGISTRY_PID" ]; then kill "$REGISTRY_PID" 2>/dev/null || true; wait "$REGISTRY_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --quiet
GALLEY=$PWD/target/release/galley

# An OCI layout with one image: the big layers (made once), then a small app layer.
make_layout() {
    python3 - "$WORK/layout" "$1" $SIZES_MB <<'PY'
import hashlib, io, json, os, sys, tarfile, zlib
layout, app_version, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
state_path = os.path.join(layout, "..", "layers.json")
state = json.load(open(state_path)) if os.path.exists(state_path) else {}

def layer(name, size, data_fn):
    if name in state:
        return state[name]
    gz = zlib.compressobj(0, zlib.DEFLATED, 31)  # a gzip member, stored blocks
    digest, diff_id, n = hashlib.sha256(), hashlib.sha256(), 0
    tmp = os.path.join(blobs, "tmp")
    with open(tmp, "wb") as out:
        def emit(raw):
            nonlocal n
            diff_id.update(raw)
            packed = gz.compress(raw)
            digest.update(packed); out.write(packed); n += len(packed)
        info = tarfile.TarInfo(name); info.size = size; info.mtime = 0
        emit(info.tobuf(format=tarfile.GNU_FORMAT))
        left = size
        while left:
            chunk = data_fn(min(left, 1 << 20)); emit(chunk); left -= len(chunk)
        emit(b"\0" * ((512 - size % 512) % 512) + b"\0" * 1024)
        tail = gz.flush(); digest.update(tail); out.write(tail); n += len(tail)
    os.rename(tmp, os.path.join(blobs, digest.hexdigest()))
    state[name] = {"digest": "sha256:" + digest.hexdigest(), "diff_id": "sha256:" + diff_id.hexdigest(), "size": n}
    return state[name]

layers = [layer(f"big-{i}-{mb}.bin", mb << 20, os.urandom) for i, mb in enumerate(sizes)]
state.pop("app", None)
body = (f"print('version {app_version}')\n" * 2000).encode()
layers.append(layer("app", len(body), lambda k, b=io.BytesIO(body): b.read(k)))
json.dump(state, open(state_path, "w"))

def blob(obj, media_type):
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    d = hashlib.sha256(raw).hexdigest()
    open(os.path.join(blobs, d), "wb").write(raw)
    return {"mediaType": media_type, "digest": "sha256:" + d, "size": len(raw)}

config = blob({"architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
               "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]}},
              "application/vnd.oci.image.config.v1+json")
manifest = blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config,
                 "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l["digest"], "size": l["size"]}
                            for l in layers]},
                "application/vnd.oci.image.manifest.v1+json")
manifest["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
open(os.path.join(layout, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
open(os.path.join(layout, "index.json"), "w").write(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
print(sum(l["size"] for l in layers))
PY
}

start_registry() {
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$WORK/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/storage
http:
  addr: 127.0.0.1:$PORT
  secret: bench
YML
    docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
    REGISTRY_PID=$!
    for _ in $(seq 100); do
        if curl -fs "http://127.0.0.1:$PORT/v2/" > /dev/null; then return; fi
        sleep 0.1
    done
    echo "the registry did not start" >&2; cat "$WORK/registry.log" >&2; exit 1
}

seconds() { date +%s.%N; }
timed() { local start; start=$(seconds); "$@" > "$WORK/last.out"; echo "$(seconds) - $start" | bc; }

echo "generating layers: $SIZES_MB MiB + app layer" >&2
TOTAL=$(make_layout 1)
start_registry
cat "$WORK"/layout/blobs/sha256/* > /dev/null

export GALLEY_CACHE=$WORK/galley-cache
SRC="oci:$WORK/layout:v1"
SK="skopeo copy --quiet --dest-tls-verify=false"

echo "full push of $((TOTAL >> 20)) MiB" >&2
T_SKOPEO_FULL=$(timed $SK "$SRC" "docker://127.0.0.1:$PORT/bench/skopeo:v1")
T_GALLEY_FULL=$(timed "$GALLEY" push "$WORK/layout" --registry "127.0.0.1:$PORT/bench/galley" --json)
FULL_BYTES=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_uploaded"])' "$WORK/last.out")

echo "re-push after an app change" >&2
make_layout 2 > /dev/null
T_SKOPEO_RE=$(timed $SK "$SRC" "docker://127.0.0.1:$PORT/bench/skopeo:v1")
T_GALLEY_RE=$(timed "$GALLEY" push "$WORK/layout" --registry "127.0.0.1:$PORT/bench/galley" --json)
RE_BYTES=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_uploaded"])' "$WORK/last.out")

echo "unchanged re-push" >&2
T_SKOPEO_NOOP=$(timed $SK "$SRC" "docker://127.0.0.1:$PORT/bench/skopeo:v1")
T_GALLEY_NOOP=$(timed "$GALLEY" push "$WORK/layout" --registry "127.0.0.1:$PORT/bench/galley" --json)

ratio() { echo "scale=2; $1 / $2" | bc; }
printf '\n%-28s %10s %10s %14s %16s\n' "push of $((TOTAL >> 20)) MiB" "galley s" "skopeo s" "galley/skopeo" "galley uploaded"
printf '%-28s %10.2f %10.2f %14s %16s\n' "full" "$T_GALLEY_FULL" "$T_SKOPEO_FULL" "$(ratio "$T_GALLEY_FULL" "$T_SKOPEO_FULL")" "$FULL_BYTES B"
printf '%-28s %10.2f %10.2f %14s %16s\n' "after an app change" "$T_GALLEY_RE" "$T_SKOPEO_RE" "$(ratio "$T_GALLEY_RE" "$T_SKOPEO_RE")" "$RE_BYTES B"
printf '%-28s %10.2f %10.2f %14s\n' "unchanged" "$T_GALLEY_NOOP" "$T_SKOPEO_NOOP" "$(ratio "$T_GALLEY_NOOP" "$T_SKOPEO_NOOP")"
