"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): so far its vision tower (``vision``, ``vision_layout``,
``vision_weights``)."""
