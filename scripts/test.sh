#!/usr/bin/env bash
# Installs what the tests need (system packages when missing, the project with its dev extras in .venv) and
# runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
tools="redis-server:redis-server redis-cli:redis-tools openssl:openssl oathtool:oathtool curl:curl jq:jq"  # jq: examples/grpcurl.md
# In CI the container deployment test runs too (tests/deploy: about 4-5 minutes on a clean machine, most of it
# making the Debian base image): it needs podman with runc and mmdebstrap.
if [ "${CI:-}" = "true" ]; then
  export KAGI_CONTAINER_TESTS="${KAGI_CONTAINER_TESTS:-1}"
fi
# In CI the browser tests run too (tests/browser: the app and the setup wizard in headless Chromium, the customer's
# certificate imported into NSS with pk12util; a Japanese font so that their screenshots are legible).
if [ "${CI:-}" = "true" ]; then
  tools="$tools chromium:chromium chromedriver:chromium-driver pk12util:libnss3-tools"
  # promtool checks deploy/observability's alert rules and dashboard queries (tests/integration/test_metrics_*).
  tools="$tools promtool:prometheus"
  [ -e /usr/share/fonts/opentype/ipafont-gothic/ipag.ttf ] || need+=(fonts-ipafont-gothic)
fi
if [ "${KAGI_CONTAINER_TESTS:-}" = "1" ]; then
  tools="$tools podman:podman runc:runc mmdebstrap:mmdebstrap"
fi
for tool in $tools; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing system packages: ${need[*]} (install them with apt-get, then rerun)" >&2
    exit 1
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
exec .venv/bin/python -m pytest "$@"
