"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): so far its vision tower (``vision``, ``vision_layout``,
``vision_weights``)."""
