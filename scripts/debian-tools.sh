#!/usr/bin/env bash
# Installs the Debian programs some end-to-end tests drive, when they are missing:
#   chromium   (/usr/bin/chromium)    tests/e2e/test_dashboard.py, through Playwright
#                                     (never `playwright install`: that downloads from a CDN)
#   prometheus (/usr/bin/prometheus)  tests/e2e/test_prometheus.py, a real scrape + PromQL
#   postgresql (initdb, pg_ctl)       tests/postgres.py: a throwaway cluster for the
#                                     gateways that share one database
# Idempotent: does nothing when they are there. Needs apt-get and root; without them it
# says so and does nothing, and those tests skip with the reason.
# Run by scripts/test; on its own: scripts/debian-tools.sh
set -euo pipefail
declare -A BINARY=([chromium]=/usr/bin/chromium [prometheus]=/usr/bin/prometheus
  [postgresql]=/usr/lib/postgresql/15/bin/initdb)

missing=()
for package in "${!BINARY[@]}"; do
  [ -x "${BINARY[$package]}" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
  echo "debian-tools: cannot apt-get install ${missing[*]} (no apt-get, or not root);" \
    "the tests that need them will skip" >&2
  exit 0
fi
echo "debian-tools: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq "${missing[@]}" >/dev/null
for package in "${missing[@]}"; do
  [ -x "${BINARY[$package]}" ] || echo "debian-tools: ${BINARY[$package]} is still missing" >&2
done
