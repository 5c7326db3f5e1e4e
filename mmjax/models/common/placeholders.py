"""Expanding each item's one marker token in a prompt into its run of placeholder tokens."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp

from mmjax.registry import DummyData, PlaceholderRange
from mmjax.types import Array, ArrayLike, Float, Int


def expand_placeholders(
    token_ids: tuple[int, ...], marker: int, counts: list[int], modality: str = "image"
) -> tuple[tuple[int, ...], tuple[PlaceholderRange, ...]]:
    """Replace the i-th ``marker`` token by ``counts[i]`` copies of it.

    Returns:
      The new token ids and one ``PlaceholderRange`` per marker.

    Raises:
      ValueError: the number of markers differs from ``len(counts)``; names the
        markers' prompt positions.
    """
    positions = [i for i, t in enumerate(token_ids) if t == marker]
    if len(positions) != len(counts):
        where = f" at prompt positions {positions}" if positions else ""
        raise ValueError(
            f"the prompt has {len(positions)} {modality} placeholder token(s) (id {marker}){where}, "
            f"but {len(counts)} {modality}(s) were given; put one <{modality}> in the prompt per {modality}"
        )
    out: list[int] = []
    ranges = []
    start = 0
    for position, count in zip(positions, counts):
        out.extend(token_ids[start:position])
        ranges.append(PlaceholderRange(len(out), count))
        out.extend([marker] * count)
        start = position + 1
    out.extend(token_ids[start:])
    return tuple(out), tuple(ranges)


def expand_each_modality(
    token_ids: tuple[int, ...], markers: dict[str, tuple[int, list[int]]]
) -> tuple[tuple[int, ...], dict[str, tuple[PlaceholderRange, ...]]]:
    """``expand_placeholders`` for several modalities at once: ``{modality: (marker, counts)}``.

    Returns the new token ids and each modality's ranges (offsets in the new ids), in ``markers``' order.
    """
    for modality, (marker, counts) in markers.items():
        expand_placeholders(tuple(t for t in token_ids if t == marker), marker, counts, modality)  # checks counts
    queues = {marker: (modality, list(counts)) for modality, (marker, counts) in markers.items()}
    out: list[int] = []
    ranges: dict[str, list[PlaceholderRange]] = {modality: [] for modality in markers}
    for token in token_ids:
        if token in queues:
            modality, counts = queues[token]
            count = counts.pop(0)
            ranges[modality].append(PlaceholderRange(len(out), count))
            out.extend([token] * count)
        else:
            out.append(token)
    return tuple(out), {modality: tuple(r) for modality, r in ranges.items()}


def modality_major_rows(input_ids: Int[ArrayLike, "B T"], placeholder_ids: tuple[int, ...]) -> Int[Array, "B T"]:
    """Each token's row in a request's placeholder rows, ``-1`` for text: the tokens of ``placeholder_ids[0]``
    in row-major order, then those of ``placeholder_ids[1]``, ... (the order ``multimodal_embeddings``
    returns rows in, and ``mmjax.engine.request.placeholder_rows`` reads them). ``jit``-safe."""
    rows = jnp.full(jnp.shape(input_ids), -1, jnp.int32)
    before = jnp.int32(0)
    for token in placeholder_ids:
        is_token = jnp.asarray(input_ids) == token
        index = jnp.cumsum(is_token.reshape(-1)).reshape(is_token.shape) - 1 + before
        rows = jnp.where(is_token, index, rows)
        before = before + jnp.sum(is_token)
    return rows


#: ``join(tokens_before, lead) -> (taken, new_lead)``: how many of the tokens before an item to take back, and the
#: tokens to put instead of them and the item's lead (e.g. the two tokenized as one text).
Join = Callable[[Sequence[int], Sequence[int]], tuple[int, Sequence[int]]]


def replace_each_modality(
    token_ids: Sequence[int], runs: Mapping[str, tuple[int, Sequence[tuple[Sequence[int], Sequence[int]]]]],
    wrappers: Mapping[str, tuple[int, int]] | None = None, joins: Mapping[str, Join] | None = None,
) -> tuple[tuple[int, ...], dict[str, tuple[PlaceholderRange, ...]]]:
    """Replace the i-th marker of each modality by its i-th item's ``(lead, run)``: ``{modality: (marker, items)}``.

    ``run`` is the item's ``PlaceholderRange``; ``lead`` is text the item brings before it (Qwen3-VL's video:
    its first timestamp), which a ``joins`` entry of the modality may tokenize together with the text before
    the item (``Join``). A modality with a wrapper ``(start, end)`` in ``wrappers`` has a marker found between
    ``start`` and ``end`` replaced together with them (Qwen3-VL's video run brings a wrapper per frame).
    (``expand_each_modality`` is the case of no leads and runs that repeat the marker.)

    Returns:
      The new token ids and each modality's ranges (offsets in the new ids), in ``runs``' order.

    Raises:
      ValueError: a modality's marker count differs from its number of items (naming the markers' positions).
    """
    wrappers, joins = wrappers or {}, joins or {}
    for modality, (marker, items) in runs.items():
        expand_placeholders(tuple(token_ids), marker, [1] * len(items), modality)  # checks the counts
    queues = {marker: (modality, list(items)) for modality, (marker, items) in runs.items()}
    out: list[int] = []
    ranges: dict[str, list[PlaceholderRange]] = {modality: [] for modality in runs}
    ids = list(token_ids)
    i = 0
    while i < len(ids):
        token = ids[i]
        if token not in queues:
            out.append(token)
            i += 1
            continue
        modality, items = queues[token]
        start, end = wrappers.get(modality, (None, None))
        wrapped = start is not None and i > 0 and ids[i - 1] == start and i + 1 < len(ids) and ids[i + 1] == end
        if wrapped:
            out.pop()
        lead, run = items.pop(0)
        if modality in joins and lead:
            taken, lead = joins[modality](tuple(out), tuple(lead))
            del out[len(out) - taken:]
        out.extend(lead)
        ranges[modality].append(PlaceholderRange(len(out), len(run)))
        out.extend(run)
        i += 2 if wrapped else 1
    return tuple(out), {modality: tuple(r) for modality, r in ranges.items()}


def concat_real_rows(parts: Sequence[tuple[Array, ArrayLike]]) -> Float[Array, "all W"]:
    """The real rows of each part, one part after the other, then padding: ``parts`` are ``(rows [n, W],
    num_real)``, a part's first ``num_real`` rows real. ``jit``-safe (``num_real`` may be traced); one part is
    returned as is."""
    rows, total = parts[0]
    for more, count in parts[1:]:
        k = jnp.arange(rows.shape[0] + more.shape[0])
        index = jnp.where(k < total, k, rows.shape[0] + k - total)  # each row reads its source by a computed index
        both = jnp.concatenate([rows, more.astype(rows.dtype)])
        rows, total = jnp.take(both, jnp.clip(index, 0, both.shape[0] - 1), axis=0), total + count
    return rows


def dummy_runs(seq_len: int, runs: Sequence[tuple[str, int, object, int, int]]) -> DummyData:
    """Dummy data of whole placeholder runs, modality after modality, then zeros up to ``seq_len``.

    ``runs``: ``(modality, token id, item, tokens per item, count)``: ``count`` copies of ``item``, each
    with a run of ``tokens per item`` copies of the token id (a modality of count 0 is left out).
    """
    data, placeholders, token_ids = {}, {}, []
    for modality, token_id, item, per_item, count in runs:
        if not count:
            continue
        start = len(token_ids)
        data[modality] = [item] * count
        placeholders[modality] = [PlaceholderRange(start + i * per_item, per_item) for i in range(count)]
        token_ids += [token_id] * (per_item * count)
    token_ids += [0] * max(0, seq_len - len(token_ids))
    return DummyData(prompt_token_ids=token_ids, multi_modal_data=data, multi_modal_placeholders=placeholders)
