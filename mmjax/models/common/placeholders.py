"""Expanding each item's one marker token in a prompt into its run of placeholder tokens."""

from __future__ import annotations

from mmjax.registry import PlaceholderRange


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
