"""A request's ``mm_processor_kwargs`` on the server: they may lower its media limits, never raise them.

mmjax's models take no per-request processor knob, so the server reads only the keys below, each a
limit of ``MediaLimits`` that a request may tighten for its own images and videos; a larger value
than the server's, or any other key, is refused with a 400 naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mmjax.serving.media_limits import MediaLimits
from mmjax.serving.protocol import RequestRefused

#: Request key -> the ``MediaLimits`` field it lowers.
LOWERABLE = {"max_pixels": "max_image_pixels", "max_image_bytes": "max_image_bytes",
             "fetch_timeout_s": "fetch_timeout_s", "max_video_frames": "max_video_frames",
             "max_video_pixels": "max_video_pixels", "max_video_bytes": "max_video_bytes"}


def lowered_media(limits: MediaLimits, kwargs: Mapping[str, Any] | None) -> MediaLimits:
    """``limits`` with the request's own lower values (``RequestRefused`` for a key or value it may not set)."""
    if not kwargs:
        return limits
    changes: dict[str, Any] = {}
    for key, value in kwargs.items():
        param = f"mm_processor_kwargs.{key}"
        field = LOWERABLE.get(key)
        if field is None:
            raise RequestRefused(f"{param}: not a knob this server takes; a request may only lower its media "
                                 f"limits ({', '.join(sorted(LOWERABLE))})", param)
        ceiling = getattr(limits, field)
        number_type = float if field == "fetch_timeout_s" else int
        if isinstance(value, bool) or not isinstance(value, (int, float) if number_type is float else int):
            raise RequestRefused(f"{param} must be a{'' if number_type is float else 'n'} "
                                 f"{number_type.__name__}", param)
        if not 0 < value <= ceiling:
            raise RequestRefused(f"{param}={value}: must be in (0, {ceiling}] (a request may lower the server's "
                                 "limit, not raise it)", param)
        changes[field] = number_type(value)
    return dataclasses.replace(limits, **changes)
