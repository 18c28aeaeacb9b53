#!/usr/bin/env bash
# Installs Claude Code, pinned, into .cache/claude-code for tests/e2e/test_claude_code.py.
# Idempotent: quick when that version already runs. Needs node and npm (the package is a
# native binary that npm's postinstall copies into place, ~400 MB on disk); without them it
# says so and does nothing, and those tests skip with the reason.
# Run by scripts/test; on its own: scripts/claude-code.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="2.1.332"
DIR="$ROOT/.cache/claude-code"
BIN="$DIR/node_modules/.bin/claude"

installed() {
  [ "$("$BIN" --version 2>/dev/null || true)" = "$VERSION (Claude Code)" ]
}

installed && exit 0
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "claude-code: node/npm not found; the Claude Code tests will skip" >&2
  exit 0
fi
echo "claude-code: installing @anthropic-ai/claude-code@$VERSION into $DIR" >&2
mkdir -p "$DIR"
# The package asks for node >= 22 but runs none of it: node only copies the binary.
npm install --prefix "$DIR" --no-save --no-audit --no-fund --loglevel=error \
  "@anthropic-ai/claude-code@$VERSION" >&2
if ! installed; then
  # npm may skip install scripts it has not been told to allow: run the copy step here.
  (cd "$DIR/node_modules/@anthropic-ai/claude-code" && node install.cjs) >&2
fi
if ! installed; then
  echo "claude-code: $BIN does not run; the Claude Code tests will skip" >&2
fi
