"""The transformers reference model itself behaves (slow: loads torch + the GGUF)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `tests` is not a package on pytest's default sys.path; make `tests.reference` importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests import reference as ref  # noqa: E402

# No skip when torch or transformers is missing: the suite installs them, and a
# silently skipped reference would hide a broken engine check.
pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_gguf_path_exists():
    path = ref.gguf_path()
    assert path.is_file()
    assert path.name == ref.GGUF_NAME


def test_greedy_france_answer():
    ids = ref.greedy_ids(FRANCE, 12)
    assert 0 < len(ids) <= 12
    assert ref.decode(ids).startswith("The capital of France is Paris")


def test_prompt_uses_chat_template():
    text = ref.prompt_text(FRANCE)
    assert text.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = ref.prompt_ids(FRANCE)
    tok = ref.reference().tokenizer
    # special markers are single tokens, not spelled out as text
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ref.decode(ids) == text


def test_dense_checkpoint_round_trip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    assert ref.make_dense_checkpoint(out) == out
    assert (out / "model.safetensors").is_file()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    ref.make_dense_checkpoint(out)  # idempotent: second call writes nothing
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime

    dense = ref.TransformersReference(out)
    assert dense.prompt_text(FRANCE) == ref.prompt_text(FRANCE)
    assert dense.prompt_ids(FRANCE) == ref.prompt_ids(FRANCE)
    assert dense.greedy_ids(FRANCE, 12) == ref.greedy_ids(FRANCE, 12)


def test_logit_gaps_zero_on_own_greedy():
    ids = ref.greedy_ids(FRANCE, 8)
    gaps = ref.logit_gaps(FRANCE, ids)
    assert len(gaps) == len(ids)
    assert max(gaps) < 1e-4
    # a token that is not the greedy choice has a positive gap
    other = [ids[0] + 1, *ids[1:]]
    assert ref.logit_gaps(FRANCE, other)[0] > 0
