#!/usr/bin/env bash
# Times galley against buildah (overlay storage, --layers) on the example app, in the
# same run: cold build, no-op rebuild, and a rebuild after a one-file app change.
# Both start from the same Debian root filesystem tar (made once by mmdebstrap and not
# timed). Prints a table of medians and the buildah/galley ratio.
#
#   bench/build.sh [RUNS]        (default 5; run as root; needs buildah, mmdebstrap)
set -euo pipefail
runs=${1:-5}
. "$(dirname "$0")/common.sh"
work=$(mktemp -d /tmp/galley-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

base=$(debian_base)

project=$work/project
cp -r examples/hello "$project"
rm -rf "$project/.galley"
ln "$base" "$project/debian.tar" 2>/dev/null || cp "$base" "$project/debian.tar"
sed -i 's|^debian = .*|rootfs = "debian.tar"|' "$project/galley.toml"
echo "debian.tar" > "$project/.galleyignore"
cat > "$project/Dockerfile" <<'DOCKERFILE'
FROM scratch
ADD debian.tar /
COPY app/ /app/
ENV GREETING="hello from galley" PYTHONUNBUFFERED=1 PATH=/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /workspace
USER 1000:1000
EXPOSE 8000
STOPSIGNAL SIGINT
LABEL org.example.team=ml-platform
ENTRYPOINT ["python3", "/app/hello.py"]
DOCKERFILE
printf 'Dockerfile\n' > "$project/.dockerignore"


galley_build() { "$galley" --cache "$1" build -q "$project"; }
buildah_build() {
  buildah --root "$1/root" --runroot "$1/run" --storage-driver overlay \
    bud --layers --quiet --isolation chroot -t bench-hello -f "$project/Dockerfile" "$project"
}

declare -A results
for tool in galley buildah; do
  for scenario in cold noop change; do : > "$work/$tool-$scenario"; done
  for i in $(seq "$runs"); do
    store=$work/$tool-store-$i
    git -C "$root" show HEAD:examples/hello/app/hello.py > "$project/app/hello.py" 2>/dev/null || cp examples/hello/app/hello.py "$project/app/hello.py"
    seconds "${tool}_build" "$store" >> "$work/$tool-cold"
    seconds "${tool}_build" "$store" >> "$work/$tool-noop"
    echo "# change $i" >> "$project/app/hello.py"
    seconds "${tool}_build" "$store" >> "$work/$tool-change"
    if [ "$tool" = buildah ]; then
      buildah --root "$store/root" --runroot "$store/run" --storage-driver overlay rmi -a -f >/dev/null 2>&1 || true
    fi
    rm -rf "$store"
  done
  for scenario in cold noop change; do
    results[$tool-$scenario]=$(median < "$work/$tool-$scenario")
  done
done

printf '\nexample image (%s runs each, median wall seconds)\n\n' "$runs"
printf '| %-22s | %9s | %9s | %16s |\n' scenario galley buildah "buildah / galley"
printf '|%s|%s|%s|%s|\n' "------------------------" "-----------" "-----------" "------------------"
for scenario in cold noop change; do
  g=${results[galley-$scenario]}
  b=${results[buildah-$scenario]}
  label=$scenario
  case $scenario in cold) label="cold build";; noop) label="no-op rebuild";; change) label="one-file change";; esac
  printf '| %-22s | %9s | %9s | %15.1fx |\n' "$label" "$g" "$b" "$(echo "$b / $g" | bc -l)"
done
