"""Can this node serve a model from these files, as its spec asks?

Decided from one listing of the source, ``(path, size)`` pairs, before any download
or device allocation, so an impossible spec fails in one round trip with the reason
and the fix instead of half-way through a download. Everything here is a pure
function over the listing.

A listing is one of four formats:

    gguf                .gguf weights only (``mmproj-*`` projectors aside)
    dense_safetensors   .safetensors weights only (top level: one checkpoint)
    mixed               both
    empty               neither: rejected

and the spec picks what is served:

    format    tensor_parallel > 1        quant set                 no quant
    gguf      rejected                   the GGUF it names         the only GGUF, else rejected
    dense     safetensors                rejected                  safetensors
    mixed     safetensors (no quant)     the GGUF it names         safetensors

then ``tensor_parallel`` must not exceed the devices that can take part, a GGUF
``split`` over ``devices`` GPUs needs that many GPUs llama.cpp can use, and the
weights (split over the ranks or GPUs) must fit the memory the device could ever give.

A quant matches a GGUF file whose name ends with it at a part boundary, blind to
case and separators: ``q4_k_m``, ``Q4-K-M`` and ``q4km`` all find
``Qwen3-8B-Q4_K_M.gguf``, while ``q6k`` does not find ``model-Q6_K_P.gguf`` and is
answered with the nearest quant the source has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from cortex.errors import PreflightKind, PreflightRejected
from cortex.spec import ModelSpec

Listing = Sequence[tuple[str, int]]  # (path relative to the source root, size in bytes)
SourceFormat = Literal["gguf", "dense_safetensors", "mixed", "empty"]

MIB = 2**20
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")  # llama.cpp's split GGUF files
_QUANT_START = re.compile(r"^(i?q\d|bf\d|f\d|mxfp|tq\d)", re.IGNORECASE)
# Beside the weights, what a dense checkpoint needs: config, tokenizer, chat template.
_DENSE_EXTRAS = re.compile(
    r"^(.*\.json|tokenizer\.model|.*\.tiktoken|merges\.txt|vocab\.txt|.*\.jinja)$"
)
_SUGGEST_MAX_DISTANCE = 0.5  # edit distance over the longer name's length


@dataclass(frozen=True)
class Plan:
    """What to serve from a source that passed preflight."""

    format: Literal["gguf", "dense_safetensors"]
    files: tuple[str, ...]  # what to fetch, relative to the source root
    entry: str | None  # the GGUF file to open (its first shard); None: the directory
    weights_bytes: int
    note: str | None = None  # a choice worth a log line (what a mixed source serves)


@dataclass(frozen=True)
class _Gguf:
    """One GGUF model file, or the shards of one split file."""

    entry: str
    files: tuple[str, ...]
    size: int

    @property
    def label(self) -> str:
        return quant_label(self.entry)


# -- classification ------------------------------------------------------------------


def _gguf_models(listing: Listing) -> list[_Gguf]:
    shards: dict[str, list[tuple[str, int]]] = {}
    for path, size in listing:
        name = PurePosixPath(path).name
        if not name.lower().endswith(".gguf") or name.lower().startswith("mmproj"):
            continue
        key = _SHARD.sub("", path[: -len(".gguf")])
        shards.setdefault(key, []).append((path, size))
    return [
        _Gguf(
            entry=min(paths)[0],
            files=tuple(sorted(p for p, _ in paths)),
            size=sum(s for _, s in paths),
        )
        for paths in shards.values()
    ]


def _dense_weights(listing: Listing) -> list[tuple[str, int]]:
    top = [(p, s) for p, s in listing if "/" not in p and p.endswith(".safetensors")]
    # Some repos carry the same weights twice: sharded, and as consolidated*.safetensors.
    sharded = [(p, s) for p, s in top if not p.startswith("consolidated")]
    return sorted(sharded or top)


def classify(listing: Listing) -> SourceFormat:
    has_gguf, has_dense = bool(_gguf_models(listing)), bool(_dense_weights(listing))
    if has_gguf and has_dense:
        return "mixed"
    if has_gguf:
        return "gguf"
    return "dense_safetensors" if has_dense else "empty"


# -- quant names -----------------------------------------------------------------------


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _stem(path: str) -> str:
    return _SHARD.sub("", PurePosixPath(path).name[: -len(".gguf")])


def quant_label(path: str) -> str:
    """The quant a GGUF file name carries, as written there: ``Q4_K_M`` of
    ``Qwen3-8B-Q4_K_M.gguf``, ``Q4_1`` of ``SmolLM2-135M-Instruct.Q4_1.gguf``."""
    last = re.split(r"[-.]", _stem(path))[-1]
    tokens = last.split("_")
    start = next((i for i, t in enumerate(tokens) if _QUANT_START.match(t)), 0)
    return "_".join(tokens[start:])


def quant_matches(quant: str, path: str) -> bool:
    """Whether the file's name ends with ``quant`` at a part boundary, blind to case
    and separators."""
    wanted = _normalise(quant)
    parts = re.split(r"[-._]", _stem(path))
    return any(_normalise("".join(parts[i:])) == wanted for i in range(len(parts)))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def nearest_quant(quant: str, labels: Sequence[str]) -> str | None:
    """The label closest to ``quant`` (blind to case and separators), if close enough
    to be a likely typo: at most half the longer name's characters differ."""
    wanted = _normalise(quant)
    scored = []
    for label in labels:
        name = _normalise(label)
        distance = edit_distance(wanted, name) / max(len(wanted), len(name), 1)
        scored.append((distance, label))
    if not scored:
        return None
    distance, label = min(scored)
    return label if distance <= _SUGGEST_MAX_DISTANCE else None


# -- the feasibility table ---------------------------------------------------------------


def plan(
    spec: ModelSpec,
    listing: Listing,
    *,
    devices_available: int | None,
    free_mb: int | None,
    gpus: int | None = None,
) -> Plan:
    """What to serve for ``spec`` from ``listing``, or ``PreflightRejected`` saying why
    not. ``devices_available``: devices a tensor-parallel model may use (None: no
    check); ``free_mb``: the most memory one device could give the model (None: no check);
    ``gpus``: GPUs llama.cpp can offload to, for a GGUF ``split`` (None: no check).
    """
    fmt = classify(listing)
    if fmt == "empty":
        if spec.source.startswith("hf:"):  # a public listing: naming its files helps
            names = ", ".join(p for p, _ in list(listing)[:5]) or "no files at all"
            detail = f"{spec.source} holds no model weights (.gguf or .safetensors): {names}."
        else:  # a node's own files are nobody's business: no listing
            detail = f"{spec.source} is not a model file or directory (no .gguf or .safetensors)."
        raise _reject(
            spec,
            "empty_source",
            detail,
            "Point source at a repository or directory with GGUF or safetensors weights.",
        )
    chosen = _choose(spec, listing, fmt)
    if devices_available is not None and spec.tensor_parallel > devices_available:
        raise _reject(
            spec,
            "too_many_ranks",
            f"tensor_parallel={spec.tensor_parallel} but this node has {devices_available} "
            "device(s) that can take part.",
            f"Set tensor_parallel to at most {devices_available}, or place the model on a "
            "node with more GPUs (the CPU takes part as --cpu-tp-ranks ranks).",
        )
    if spec.split != "none":
        _check_split(spec, chosen, gpus)
    if free_mb is not None:
        _check_memory(spec, listing, chosen, free_mb)
    return chosen


def _check_split(spec: ModelSpec, chosen: Plan, gpus: int | None) -> None:
    asked = f'split = "{spec.split}" over devices = {spec.devices}'
    if chosen.format != "gguf":
        raise _reject(
            spec,
            "split_not_gguf",
            f"{asked} is llama.cpp's way to spread a GGUF model, but {spec.source} is "
            "served as dense safetensors.",
            "Use tensor_parallel for dense weights, or set quant to serve a GGUF file.",
        )
    if gpus is not None and spec.devices > gpus:
        have = (
            f"only {gpus} GPU(s) llama.cpp can use"
            if gpus
            else "no GPU llama.cpp can use (a CPU-only node, or a CPU-only build of llama.cpp)"
        )
        raise _reject(
            spec,
            "split_needs_gpus",
            f"{asked} needs {spec.devices} GPUs, and this node has {have}.",
            f'Set split = "none" to serve it on one device, lower devices to at most '
            f"{gpus}, or place it on a node with more GPUs."
            if gpus
            else 'Set split = "none" to serve it on one device, or place it on a GPU node.',
        )


def _choose(spec: ModelSpec, listing: Listing, fmt: SourceFormat) -> Plan:
    ggufs = _gguf_models(listing)
    if fmt == "gguf" and spec.tensor_parallel > 1:
        raise _reject(
            spec,
            "gguf_tensor_parallel",
            f"tensor_parallel={spec.tensor_parallel} needs dense safetensors weights, but "
            f"{spec.source} holds only GGUF files ({len(ggufs)}).",
            "Set tensor_parallel = 1 to serve a GGUF file on one device, or point source at "
            "the original safetensors checkpoint.",
        )
    if fmt == "dense_safetensors" and spec.quant:
        raise _reject(
            spec,
            "quant_without_gguf",
            f"quant '{spec.quant}' selects a GGUF file, but {spec.source} holds only "
            "safetensors weights.",
            "Remove quant, or point source at a GGUF repository.",
        )
    if fmt == "gguf" or (fmt == "mixed" and spec.quant and spec.tensor_parallel == 1):
        return _gguf_plan(spec, ggufs)
    note = None
    if fmt == "mixed":
        if spec.tensor_parallel > 1:
            why = "tensor_parallel needs them" + ("; quant ignored" if spec.quant else "")
        else:
            labels = ", ".join(sorted(g.label for g in ggufs))
            why = f"set quant to serve one of its GGUF files instead ({labels})"
        note = f"{spec.source} holds safetensors and GGUF weights: serving the safetensors ({why})"
    return _dense_plan(listing, note)


def _dense_plan(listing: Listing, note: str | None) -> Plan:
    weights = _dense_weights(listing)
    extras = [p for p, _ in listing if "/" not in p and _DENSE_EXTRAS.match(p)]
    return Plan(
        format="dense_safetensors",
        files=tuple(sorted({p for p, _ in weights} | set(extras))),
        entry=None,
        weights_bytes=sum(s for _, s in weights),
        note=note,
    )


def _gguf_plan(spec: ModelSpec, ggufs: list[_Gguf]) -> Plan:
    labels = sorted({g.label for g in ggufs})
    if spec.quant:
        matching = [g for g in ggufs if quant_matches(spec.quant, g.entry)]
    elif len(ggufs) == 1:
        matching = ggufs
    else:
        raise _reject(
            spec,
            "quant_required",
            f"{spec.source} holds {len(ggufs)} GGUF files and the spec sets no quant.",
            f"Set quant to one of: {', '.join(labels)}.",
        )
    if not matching:
        nearest = nearest_quant(spec.quant or "", labels)
        hint = f'Did you mean quant = "{nearest}"? ' if nearest else ""
        raise _reject(
            spec,
            "quant_not_found",
            f"No GGUF file in {spec.source} matches quant '{spec.quant}'.",
            f"{hint}Quants there: {', '.join(labels)}.",
        )
    if len(matching) > 1:
        raise _reject(
            spec,
            "quant_ambiguous",
            f"quant '{spec.quant}' matches {len(matching)} GGUF files in {spec.source}: "
            f"{', '.join(g.entry for g in matching)}.",
            "Set quant to the whole quant name of one of them.",
        )
    (picked,) = matching
    return Plan(format="gguf", files=picked.files, entry=picked.entry, weights_bytes=picked.size)


def _check_memory(spec: ModelSpec, listing: Listing, chosen: Plan, free_mb: int) -> None:
    per_rank_mb = -(-chosen.weights_bytes // (spec.width * MIB))
    if per_rank_mb <= free_mb:
        return
    ranks = f" per rank over {spec.tensor_parallel} ranks" if spec.tensor_parallel > 1 else ""
    if spec.split != "none":
        ranks = f" per GPU over {spec.devices} GPUs"
    smaller = sorted((g.size, g.label) for g in _gguf_models(listing) if g.size // MIB <= free_mb)
    hint = (
        f"Pick a smaller quant ({', '.join(label for _, label in smaller[-3:])}), "
        if smaller
        else "Pick a smaller model, "
    )
    raise _reject(
        spec,
        "insufficient_memory",
        f"The weights alone take {per_rank_mb} MB{ranks}, more than the {free_mb} MB the "
        "device could give this model even with every other model unloaded.",
        f"{hint}raise --memory-budget-mb, or place it on a node with more memory.",
    )


def _reject(
    spec: ModelSpec, reason: PreflightKind, detail: str, suggestion: str
) -> PreflightRejected:
    return PreflightRejected(reason, model_id=spec.id, detail=detail, suggestion=suggestion)
