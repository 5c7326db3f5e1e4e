"""Content hashes of multimodal items: the keys under which pure mappers' results can be cached.

An item's hash depends only on what the model would see — a PIL image's mode, size, palette
and pixels; an array's dtype, shape and values; an audio clip's samples and rate; a video's
frames and frame rate — never on
the Python object, the file it came from or the process: the same content gives the same
hash in any process on any machine. BLAKE3 (256 bits, as vLLM uses) over a length-prefixed,
tagged encoding, so no two different items share an encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import blake3
import numpy as np
from PIL import Image

from mmjax.registry.video_items import as_video_item


def hash_item(item: Any) -> str:
    """The hex BLAKE3-256 digest of one multimodal item's content.

    Args:
      item: a PIL image (decoded here if opened lazily), a numpy or JAX array (e.g. precomputed
        embeddings or a video's frames), an audio clip ``(samples, sample_rate)``, or a video with
        its metadata ``(frames, {"fps": ...})`` (a ``VideoItem``) or as a list of PIL frames. A
        video hashes by its uint8 frames and its fps (none given and ``{}`` hash alike), whatever
        form it came in; a bare frames array hashes as an array.

    Raises:
      TypeError: an item of any other type.
      ValueError: a video that is not uint8 ``[F, H, W, 3]`` (see ``video_items.as_video_item``).
    """
    hasher = blake3.blake3()
    _feed(hasher, item)
    return hasher.hexdigest()


def _feed(hasher: Any, item: Any) -> None:
    if isinstance(item, Image.Image):
        item.load()
        palette = item.getpalette() if item.mode in ("P", "PA") else None
        _field(hasher, b"image")
        _field(hasher, item.mode.encode())
        _field(hasher, struct.pack("<QQ", item.width, item.height))
        _field(hasher, b"" if palette is None else bytes(palette))
        _field(hasher, item.tobytes())
    elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping) \
            or isinstance(item, list) and item and all(isinstance(f, Image.Image) for f in item):
        video = as_video_item(item)
        _field(hasher, b"video")
        _field(hasher, b"" if video.fps is None else struct.pack("<d", video.fps))
        _feed(hasher, video.frames)
    elif isinstance(item, tuple) and len(item) == 2 and np.isscalar(item[1]):
        _field(hasher, b"audio")
        _field(hasher, struct.pack("<d", float(item[1])))
        _feed(hasher, item[0])
    elif isinstance(item, np.ndarray) or hasattr(item, "__array__") and hasattr(item, "dtype"):
        array = np.ascontiguousarray(np.asarray(item))
        if array.dtype.hasobject:
            raise TypeError(f"cannot hash an array of dtype {array.dtype}: expected numbers")
        _field(hasher, b"array")
        _field(hasher, array.dtype.str.encode())
        _field(hasher, struct.pack(f"<{array.ndim + 1}Q", array.ndim, *array.shape))
        _field(hasher, array.reshape(-1).view(np.uint8).data)
    else:
        raise TypeError(f"cannot hash a multimodal item of type {type(item).__name__}: expected a PIL image, "
                        f"an array, or an audio clip (samples, sample_rate); or a video, (frames, {{'fps': ...}}) "
                        f"or a list of PIL frames")


def _field(hasher: Any, data: bytes | memoryview) -> None:
    hasher.update(struct.pack("<Q", len(data)))
    hasher.update(data)
