"""The keys under which a prompt's multimodal items are cached: content (or the user's id) and kwargs.

An item's *key* names everything its mapped inputs, its encoder output and the KV of its
placeholder tokens depend on inside one model: the modality, the item's content hash
(``hash_item``) or the id the prompt gave it (``multi_modal_uuids``), and the
``mm_processor_kwargs`` in effect. Two items with one key are interchangeable; items with
different content or different kwargs never share a key.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import blake3
import numpy as np

from mmjax.registry.content_hash import hash_item


def content_id(item: Any, uuid: str | None) -> str:
    """The user's id of an item when it gave one, else the item's content hash."""
    return ("uuid:" + uuid) if uuid is not None else hash_item(item)


def item_key(modality: str, item_content_id: str, mm_processor_kwargs: Mapping[str, Any],
             cache_salt: str | None = None) -> str:
    """The hex BLAKE3-256 key of one item under the kwargs in effect (and the prompt's cache salt)."""
    hasher = blake3.blake3()
    fields = [b"mmjax-item-v1", modality.encode(), item_content_id.encode(),
              repr(_canonical(mm_processor_kwargs)).encode()]
    if cache_salt is not None:  # unsalted keys stay what they were
        fields.append(b"salt:" + cache_salt.encode("utf-8", "surrogatepass"))
    for field in fields:
        hasher.update(struct.pack("<Q", len(field)))
        hasher.update(field)
    return hasher.hexdigest()


def item_keys(modality: str, items: Sequence[Any], uuids: Sequence[str | None],
              mm_processor_kwargs: Mapping[str, Any], cache_salt: str | None = None) -> tuple[str, ...]:
    """``item_key`` of each item, in order (``uuids[i]`` None: hash item ``i``)."""
    return tuple(item_key(modality, content_id(item, uuid), mm_processor_kwargs, cache_salt)
                 for item, uuid in zip(items, uuids))


def _canonical(value: Any) -> Any:
    """A value whose ``repr`` is the same for equal kwargs: dicts sorted, arrays by content."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("array", hash_item(value))
    return value
