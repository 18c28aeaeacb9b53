"""What speculative decoding by prompt lookup (a spec's ``speculative = "ngram"``) gives.

The task it is for: a coding agent asks for a file back with one change. The bundled
SmolLM2-135M GGUF through ``LlamaCppEngine`` in-process, 2 threads, greedy, one
sequence, is given a ~300-token Python file and asked to repeat it with one function
renamed. Off and ngram alternate run by run, so a drift in the machine's speed hits both.

Lines: decode tok/s (first token to last) for each, their ratio (target >= 1.5x), how
many draft tokens the model accepted, and whether the greedy texts are identical
(they must be; where they are not, the first differing character is shown).

Usage: ``.venv/bin/python bench/speculative_bench.py [--runs N] [--max-new N] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from _greedy_run import run_greedy

from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.spec import BUNDLED_MODEL_SOURCE, ModelSpec

CODE = '''import json
from pathlib import Path


def load_settings(path: Path) -> dict:
    """Read the settings file, or the defaults when there is none."""
    if not path.exists():
        return {"theme": "light", "font_size": 12, "recent": []}
    with path.open() as handle:
        return json.load(handle)


def save_settings(path: Path, settings: dict) -> None:
    """Write the settings file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        json.dump(settings, handle, indent=2)


def add_recent(settings: dict, name: str, limit: int = 10) -> dict:
    """Put a file at the front of the recent list, keeping at most limit."""
    recent = [item for item in settings.get("recent", []) if item != name]
    recent.insert(0, name)
    settings["recent"] = recent[:limit]
    return settings


def main() -> None:
    path = Path.home() / ".editor" / "settings.json"
    settings = load_settings(path)
    settings = add_recent(settings, "notes.txt")
    save_settings(path, settings)


if __name__ == "__main__":
    main()
'''
PROMPT = (
    "<|im_start|>user\nHere is a Python file:\n\n```python\n" + CODE + "```\n\n"
    "Write the whole file again, with the function add_recent renamed to push_recent."
    "<|im_end|>\n<|im_start|>assistant\n```python\n"
)


def generate(engine: LlamaCppEngine, max_new: int) -> tuple[float, str, int]:
    """Greedy decode of the task: (tok/s first to last, text, tokens)."""
    sink = run_greedy(engine, engine.tokenize_prompt(PROMPT), max_new)
    assert sink.finished is not None
    return sink.decode_tok_s, "".join(sink.text), sink.finished.completion_tokens


def measure(path: Path, mode: str, max_new: int) -> dict[str, float | str]:
    spec = ModelSpec(
        id="bench", source=BUNDLED_MODEL_SOURCE, context_length=2048, max_batch=1,
        prefix_cache=False, speculative=mode,
        # Off: llama.cpp's extra buffer types die of SIGILL on batches on some Xeons
        # (the neuron's canary finds that; this bench loads in-process without one),
        # and on or off made no difference to either number where they run.
        extra_buffer_types=False,
    )  # fmt: skip
    engine = LlamaCppEngine(path, spec, "cpu", 2)
    try:
        tok_s, text, count = generate(engine, max_new)
        return {
            "tok_s": tok_s,
            "tokens": count,
            "drafted": engine.drafted_tokens,
            "accepted": engine.accepted_tokens,
            "text": text,
        }
    finally:
        engine.close()


def first_difference(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new", type=int, default=400)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    path = resolve_local(parse_source(BUNDLED_MODEL_SOURCE))
    runs: dict[str, list[dict[str, float | str]]] = {"off": [], "ngram": []}
    for _ in range(args.runs):
        for mode in runs:
            result = measure(path, mode, args.max_new)
            runs[mode].append(result)
            shown = {k: v for k, v in result.items() if k != "text"}
            print(mode, json.dumps(shown), file=sys.stderr, flush=True)
    off = statistics.median(float(r["tok_s"]) for r in runs["off"])
    ngram = statistics.median(float(r["tok_s"]) for r in runs["ngram"])
    last = runs["ngram"][-1]
    text_off, text_ngram = str(runs["off"][-1]["text"]), str(last["text"])
    print(f"SmolLM2-135M Q4_1, 2 threads, greedy, median of {args.runs} runs")
    print(f"off   {off:7.1f} tok/s   {runs['off'][-1]['tokens']} tokens")
    print(f"ngram {ngram:7.1f} tok/s   {last['tokens']} tokens   ratio {ngram / off:.3f}")
    print(f"drafts accepted {last['accepted']} of {last['drafted']}")
    if text_off == text_ngram:
        print("greedy text identical")
    else:
        at = first_difference(text_off, text_ngram)
        print(f"greedy text DIFFERS at character {at}: {text_off[at:at + 40]!r} vs "
              f"{text_ngram[at:at + 40]!r}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
