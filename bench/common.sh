# Shared by the bench scripts (sourced, not run): goes to the repository root ($root),
# builds galley in release mode ($galley), and defines the Debian base tar, timing and
# medians.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cargo build --release --quiet
galley=$root/target/release/galley

# Prints the path of the Debian bookworm root filesystem tar with python3, made once by
# mmdebstrap (as the tests make it) and kept in the test cache.
debian_base() {
  local base=${GALLEY_TEST_CACHE:-$root/target/test-cache}/debian-bookworm-python3.tar
  if [ ! -f "$base" ]; then
    mkdir -p "$(dirname "$base")"
    SOURCE_DATE_EPOCH=0 mmdebstrap --variant=minbase --include=python3 --quiet --format=tar bookworm "$base.tmp" >&2
    mv "$base.tmp" "$base"
  fi
  echo "$base"
}

seconds() { # prints the wall seconds of running "$@" quietly; shows its output if it fails
  local start end log
  log=$(mktemp)
  start=$(date +%s.%N)
  if ! "$@" >"$log" 2>&1; then
    echo "failed: $*" >&2
    tail -n 30 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  end=$(date +%s.%N)
  rm -f "$log"
  echo "$end - $start" | bc -l
}

median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
