#!/usr/bin/env bash
# Installs the Codex CLI, pinned, into .cache/codex for tests/e2e/test_codex.py.
# Idempotent: quick when that version already runs. Needs node and npm (the package is a
# small node launcher plus a native binary from an optional per-platform dependency,
# @openai/codex-linux-x64 and the like); without them it says so and does nothing, and
# those tests skip with the reason.
# Run by scripts/test; on its own: scripts/codex.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="0.169.0"
DIR="$ROOT/.cache/codex"
BIN="$DIR/node_modules/.bin/codex"

installed() {
  [ "$("$BIN" --version 2>/dev/null || true)" = "codex-cli $VERSION" ]
}

installed && exit 0
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "codex: node/npm not found; the Codex CLI tests will skip" >&2
  exit 0
fi
echo "codex: installing @openai/codex@$VERSION into $DIR" >&2
mkdir -p "$DIR"
# --include=optional: the native binary comes in the platform's optional dependency,
# which an npm configured to omit optional packages would leave out.
npm install --prefix "$DIR" --no-save --no-audit --no-fund --loglevel=error \
  --include=optional "@openai/codex@$VERSION" >&2
if ! installed; then
  echo "codex: $BIN does not run; the Codex CLI tests will skip" >&2
fi
