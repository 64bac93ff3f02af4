#!/usr/bin/env bash
# Times galley against buildah on a torch-sized env: torch from PyPI (with its nvidia-*
# CUDA wheels and triton, about 3 GB of wheels) plus numpy, on a Debian bookworm base
# made by mmdebstrap. buildah builds the equivalent best-practice Dockerfile: uv with a
# cache mount, the same pinned wheels (hashes from galley.lock), dependencies before the
# app code. Both tools start every cold build with their wheel caches warm (galley's
# wheels-v1, buildah's uv cache mount), so this compares building, not downloading.
#
# Scenarios: cold build, dependency change (add `six`), source change (one app file),
# and the image sizes. The two tools' runs are interleaved so machine noise hits both;
# the table shows medians and buildah / galley ratios.
#
#   bench/envs.sh [RUNS]          (default 3; run as root; needs buildah, uv, python3, bc,
#                                  mmdebstrap unless the test cache has the base, and PyPI)
#
# Downloads (galley's wheels, uv's cache) are removed at the end unless
# GALLEY_BENCH_KEEP=DIR names a directory to keep them in between invocations.
# Peak disk use is about 30 GB.
set -euo pipefail
runs=${1:-3}
. "$(dirname "$0")/common.sh"
work=$(mktemp -d /var/tmp/galley-envs.XXXXXX)
keep=${GALLEY_BENCH_KEEP:-$work/keep}
mkdir -p "$keep"
keep=$(cd "$keep" && pwd)

buildah_in() { # buildah on the store in $1
  local store=$1
  shift
  TMPDIR=$keep/tmp buildah --root "$store/root" --runroot "$store/run" --storage-driver overlay "$@"
}
drop_buildah_store() {
  [ -d "$1/root" ] || return 0
  buildah_in "$1" rm -a >/dev/null 2>&1 || true
  buildah_in "$1" rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$1"
}
cleanup() {
  for store in "$work"/buildah-*; do [ -d "$store" ] && drop_buildah_store "$store"; done
  rm -rf "$work"
}
trap cleanup EXIT

base=$(debian_base)

# uv's own binary for the build context (a pyenv or pip shim would not run in the image).
uv_bin=$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null || command -v uv)
if [ "$(head -c 4 "$uv_bin" | tr -d '\177')" != ELF ]; then
  echo "cannot find the uv executable (found $uv_bin); pip install uv" >&2
  exit 1
fi

project=$work/project
mkdir -p "$project/app"
ln "$base" "$project/debian.tar" 2>/dev/null || cp "$base" "$project/debian.tar"
cp "$uv_bin" "$project/uv"
# The build container must trust the same CAs as this machine (a TLS-re-signing proxy).
cp /etc/ssl/certs/ca-certificates.crt "$project/ca.pem"
main_py='import numpy, torch; print(torch.__version__, numpy.__version__)'
echo "$main_py" > "$project/app/main.py"
echo "debian.tar" > "$project/.galleyignore"
printf 'Dockerfile\n.galley\ngalley.toml\ngalley.lock\n' > "$project/.dockerignore"

manifest() { # galley.toml with the given requirements (a TOML array body)
  cat <<TOML
[image]
name = "bench-torch"
version = "0.1.0"

[base]
rootfs = "debian.tar"

[envs.app]
requirements = [$1]

[[files]]
src = "app/"
dest = "/app"

[runtime]
entrypoint = ["python", "/app/main.py"]
workdir = "/workspace"
TOML
}

requirements() { # the pinned wheels of galley.lock, with hashes, for uv
  python3 - "$project/galley.lock" <<'PY'
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
for w in lock["envs"]["app"]["wheels"]:
    print(f"{w['name']}=={w['version']} --hash=sha256:{w['sha256']}")
PY
}

# Lock both dependency sets once (not timed); each scenario then swaps files in.
for variant in base six; do
  reqs='"torch", "numpy"'
  [ "$variant" = six ] && reqs='"torch", "numpy", "six"'
  manifest "$reqs" > "$project/galley.toml"
  "$galley" lock -q "$project"
  mkdir -p "$work/$variant"
  cp "$project/galley.toml" "$project/galley.lock" "$work/$variant/"
  requirements > "$work/$variant/requirements.txt"
done
use_deps() { cp "$work/$1/galley.toml" "$work/$1/galley.lock" "$work/$1/requirements.txt" "$project/"; }

cat > "$project/Dockerfile" <<'DOCKERFILE'
FROM scratch
ADD debian.tar /
ENV UV_LINK_MODE=copy
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv,target=/usr/local/bin/uv \
    --mount=type=bind,source=ca.pem,target=/tmp/ca.pem \
    export SSL_CERT_FILE=/tmp/ca.pem && \
    uv venv /opt/venv --python /usr/bin/python3 && \
    uv pip install --python /opt/venv/bin/python --no-deps --require-hashes -r /tmp/requirements.txt
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin VIRTUAL_ENV=/opt/venv
COPY app/ /app/
WORKDIR /workspace
ENTRYPOINT ["python", "/app/main.py"]
DOCKERFILE

galley_build() { "$galley" --cache "$1" build -q "$project"; }
buildah_build() {
  buildah_in "$1" bud --layers --quiet --isolation chroot --network host -t bench-torch -f "$project/Dockerfile" "$project"
}

# Warm both wheel caches (not timed): galley keeps only wheels-v1, uv its cache mount.
echo "warming the wheel caches (downloads about 3 GB the first time)..." >&2
use_deps six
quiet() { "$@" >"$work/warm.log" 2>&1 || { cat "$work/warm.log" >&2; exit 1; }; }
quiet galley_build "$keep/galley"
find "$keep/galley" -mindepth 1 -maxdepth 1 ! -name wheels-v1 -exec rm -rf {} +
quiet buildah_build "$work/buildah-warm"
drop_buildah_store "$work/buildah-warm"


layout_sizes() { # compressed and uncompressed bytes of the layers of the one image in an OCI layout
  python3 - "$1" <<'PY'
import gzip, json, os, sys
layout = sys.argv[1]
blob = lambda d: os.path.join(layout, "blobs", *d.split(":"))
manifest = json.load(open(blob(json.load(open(os.path.join(layout, "index.json")))["manifests"][0]["digest"])))
compressed = uncompressed = 0
for layer in manifest["layers"]:
    compressed += layer["size"]
    with gzip.open(blob(layer["digest"])) as f:
        while chunk := f.read(1 << 20):
            uncompressed += len(chunk)
print(compressed, uncompressed)
PY
}

scenarios="cold deps source"
for tool in galley buildah; do for s in $scenarios; do : > "$work/$tool-$s"; done; done
for i in $(seq "$runs"); do
  echo "run $i of $runs..." >&2
  use_deps base
  echo "$main_py" > "$project/app/main.py"
  rm -rf "$project/.galley"
  mkdir -p "$work/galley-$i"
  cp -al "$keep/galley/wheels-v1" "$work/galley-$i/wheels-v1"
  for s in $scenarios; do
    case $s in
      deps) use_deps six ;;
      source) echo "# change $i" >> "$project/app/main.py" ;;
    esac
    seconds galley_build "$work/galley-$i" >> "$work/galley-$s"
    seconds buildah_build "$work/buildah-$i" >> "$work/buildah-$s"
  done
  if [ "$i" = "$runs" ]; then
    read -r g_gz g_raw < <(layout_sizes "$project/.galley/out")
    buildah_in "$work/buildah-$i" push --quiet --format oci bench-torch "oci:$work/buildah-oci:latest" >/dev/null
    read -r b_gz b_raw < <(layout_sizes "$work/buildah-oci")
  fi
  rm -rf "$work/galley-$i"
  drop_buildah_store "$work/buildah-$i"
done

torch=$(grep -A1 '^name = "torch"' "$work/base/galley.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
wheels=$(python3 -c 'import sys, tomllib; print(round(sum(w["size"] for w in tomllib.load(open(sys.argv[1], "rb"))["envs"]["app"]["wheels"]) / 1e9, 2))' "$work/base/galley.lock")
printf '\ntorch %s + numpy (%s GB of wheels); %s runs each, median wall seconds\n\n' "$torch" "$wheels" "$runs"
printf '| %-32s | %9s | %9s | %16s |\n' scenario galley buildah "buildah / galley"
printf '|%s|%s|%s|%s|\n' "----------------------------------" "-----------" "-----------" "------------------"
for s in $scenarios; do
  g=$(median < "$work/galley-$s")
  b=$(median < "$work/buildah-$s")
  case $s in
    cold) label="cold build (wheels cached)" ;;
    deps) label="dependency change (add six)" ;;
    source) label="source change (one app file)" ;;
  esac
  printf '| %-32s | %9s | %9s | %15.1fx |\n' "$label" "$g" "$b" "$(echo "$b / $g" | bc -l)"
done
gb() { echo "scale=2; $1 / 1000000000" | bc -l; }
printf '| %-32s | %9s | %9s | %15.2fx |\n' "image size, uncompressed (GB)" "$(gb "$g_raw")" "$(gb "$b_raw")" "$(echo "$b_raw / $g_raw" | bc -l)"
printf '| %-32s | %9s | %9s | %15.2fx |\n' "image size, gzip (GB)" "$(gb "$g_gz")" "$(gb "$b_gz")" "$(echo "$b_gz / $g_gz" | bc -l)"
