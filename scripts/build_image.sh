#!/usr/bin/env bash
# Builds the kagi container image (deploy/Containerfile) without network access during the build: a wheelhouse
# of kagi and its dependencies is made here first (pip wheel), then installed in the image with --no-index.
#
#   scripts/build_image.sh                 # localhost/kagi:latest on python:3.11-slim-bookworm
#   scripts/build_image.sh --local-base    # on a Debian base made here with mmdebstrap (no registry needed)
#
# Options: --local-base (make localhost/kagi-base:bookworm with mmdebstrap when it is missing, and build on it;
# the same image carries redis-server, so it also serves as REDIS_IMAGE), --rebuild-base (make it even when it
# exists), --tag NAME (default localhost/kagi:latest), --work DIR (the build context and the base tarball;
# default a temporary directory, removed after). Environment: BASE_IMAGE (the base's name; naming
# localhost/kagi-base:bookworm implies --local-base), CONTAINER_ENGINE (podman, else docker), PYTHON (the
# Python that builds the wheels, default .venv/bin/python or python3).
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL_BASE=localhost/kagi-base:bookworm
tag=localhost/kagi:latest
work=""
local_base=false
rebuild_base=false
base_image=${BASE_IMAGE:-python:3.11-slim-bookworm}
while [ $# -gt 0 ]; do
  case "$1" in
    --local-base) local_base=true; shift ;;
    --rebuild-base) local_base=true; rebuild_base=true; shift ;;
    --tag) tag=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$base_image" = "$LOCAL_BASE" ] && local_base=true
$local_base && base_image=$LOCAL_BASE

engine=${CONTAINER_ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

if [ -z "$work" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

if $local_base && { $rebuild_base || ! "$engine" image inspect "$LOCAL_BASE" >/dev/null 2>&1; }; then
  echo "== base image $LOCAL_BASE (mmdebstrap)"
  mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates,redis-server bookworm \
    "$work/base.tar"
  "$engine" import "$work/base.tar" "$LOCAL_BASE" >/dev/null
  rm -f "$work/base.tar"
fi

echo "== wheelhouse"
context="$work/context"
rm -rf "$context"
mkdir -p "$context/wheelhouse"
# Dependency markers are evaluated for the Python building the wheels: async-timeout is redis's only below Python
# 3.11.3 (Debian bookworm's python3 is 3.11.2), so it goes in for the image whatever Python runs this.
"$python" -m pip wheel --quiet --disable-pip-version-check . async-timeout --wheel-dir "$context/wheelhouse" \
  2> >(grep -v '^WARNING: Location' >&2)
cp deploy/init.sh deploy/mailsink.py "$context/"

echo "== image $tag (on $base_image)"
"$engine" build --quiet -f deploy/Containerfile --build-arg "BASE_IMAGE=$base_image" -t "$tag" "$context"
echo "built $tag"
