"""``mmjax.chat``: messages in, through the checkpoint's own chat template, outputs out (vLLM's ``LLM.chat``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from mmjax.engine.generate import generate_mapped
from mmjax.engine.outputs import RequestOutput
from mmjax.engine.sampling_params import SamplingParams
from mmjax.registry import ProcessedPrompt, PromptInputs
from mmjax.serving.chat_template import find_chat_template, render_chat
from mmjax.serving.media import MediaLimits, load_image_url
from mmjax.serving.messages import ImageRef, ParsedChat, VideoRef, parse_messages
from mmjax.serving.video_decode import load_video_url
from mmjax.engine.loaded_model import LoadedModel


def image_placeholder(llm: LoadedModel) -> str:
    """The text of the model's image placeholder token (``"<image>"`` for llava-hf checkpoints)."""
    config = llm.hf_config
    token_id = getattr(config, "image_token_index", None)
    token_id = getattr(config, "image_token_id", None) if token_id is None else token_id
    if token_id is None:
        raise ValueError(f"{llm.model_config.name} names no image token (image_token_index) in its config")
    return llm.tokenizer.convert_ids_to_tokens(int(token_id))


def video_placeholder(llm: LoadedModel) -> str:
    """The text of the model's video placeholder token (``"<|video_pad|>"`` for Qwen-VL), or "" if it names none."""
    config = llm.hf_config
    token_id = getattr(config, "video_token_id", None)
    token_id = getattr(config, "video_token_index", None) if token_id is None else token_id
    return "" if token_id is None else llm.tokenizer.convert_ids_to_tokens(int(token_id))


def image_limit(llm: LoadedModel) -> int:
    """Most images one prompt may hold (``limit_mm_per_prompt["image"]``)."""
    return int(llm.mm_registry.init_mm_limits_per_prompt(llm.model_config).get("image", 0))


def check_media_counts(llm: LoadedModel, parsed: ParsedChat) -> None:
    """Refuse, before anything is fetched, more images or videos than the model takes per prompt, or a
    video for a model that takes none (``ValueError`` naming the part)."""
    limit = image_limit(llm)
    if len(parsed.images) > limit:
        raise ValueError(f"the messages hold {len(parsed.images)} images; this model takes at most {limit} per "
                         f"prompt (limit_mm_per_prompt={{'image': {limit}}})")
    if not parsed.videos:
        return
    if not llm.mm_registry.takes_modality(llm.model_config, "video"):
        raise ValueError(f"{parsed.videos[0].where}: this model takes no video input (no video input mapper is "
                         f"registered for {llm.model_config.model_cls.__name__}); send images or text")
    limit = int(llm.mm_registry.init_mm_limits_per_prompt(llm.model_config).get("video", 0))
    if len(parsed.videos) > limit:
        raise ValueError(f"the messages hold {len(parsed.videos)} videos; this model takes at most {limit} per "
                         f"prompt (limit_mm_per_prompt={{'video': {limit}}})")


def chat_template_of(llm: LoadedModel, override: str | None = None) -> str:
    """The checkpoint's chat template (``override``: Jinja text or a file), see ``find_chat_template``."""
    return find_chat_template(llm.model_config.model, llm.tokenizer, override)


def chat_prompt(
    llm: LoadedModel,
    messages: Sequence[Mapping[str, Any]],
    *,
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    media: MediaLimits | None = None,
    tokenizer: Any = None,
) -> PromptInputs:
    """The prompt (text or token ids, with its images and videos) that ``messages`` make under the chat template.

    Images and videos given by URL are loaded here (``media``: the limits on fetching, size, frames
    and pixels; a video is decoded with PyAV, ``mmjax[video]``). Tokenized the way transformers'
    processors tokenize a chat: a rendered prompt that starts with the BOS text gets no second BOS.

    Raises:
      ValueError: bad messages (named by message and part), more images or videos than the model's
        limit, a video for a model that takes none, an image or video that cannot be loaded
        (``MediaError``), no chat template.
    """
    tokenizer = llm.tokenizer if tokenizer is None else tokenizer
    parsed = parse_messages(messages)
    check_media_counts(llm, parsed)
    template = chat_template_of(llm, chat_template)
    placeholder = image_placeholder(llm) if parsed.images else ""
    text = render_chat(tokenizer, template, parsed.conversation, placeholder=placeholder,
                       video_placeholder=video_placeholder(llm) if parsed.videos else "",
                       add_generation_prompt=add_generation_prompt and not continue_final_message,
                       continue_final_message=continue_final_message)
    media = media or MediaLimits()
    images, videos = load_images(parsed.images, media), load_videos(parsed.videos, media)
    prompt: dict[str, Any]
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        prompt = {"prompt_token_ids": list(tokenizer(text, add_special_tokens=False).input_ids)}
    else:
        prompt = {"prompt": text}
    mm_data = {key: items if len(items) > 1 else items[0] for key, items in (("image", images), ("video", videos))
               if items}
    if mm_data:
        prompt["multi_modal_data"] = mm_data
    return prompt


def load_images(refs: Sequence[ImageRef], media: MediaLimits) -> list[Any]:
    """The images of a conversation, URLs loaded within ``media``'s limits."""
    return [r.source if not isinstance(r.source, str) else load_image_url(r.source, media, r.where) for r in refs]


def load_videos(refs: Sequence[VideoRef], media: MediaLimits) -> list[Any]:
    """The videos of a conversation, URLs fetched and decoded within ``media``'s limits, as
    ``(frames, {"fps": ...})`` (frames given directly are passed on as they are)."""
    return [r.source if not isinstance(r.source, str) else load_video_url(r.source, media, r.where) for r in refs]


def chat(
    llm: LoadedModel,
    messages: Sequence[Mapping[str, Any]] | Iterable[Sequence[Mapping[str, Any]]],
    sampling_params: SamplingParams | Iterable[SamplingParams] | None = None,
    *,
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    media: MediaLimits | None = None,
    **generate_kwargs: Any,
) -> list[RequestOutput] | Iterator[RequestOutput] | Iterator[tuple[int, RequestOutput]]:
    """Generate replies to one conversation or many (vLLM's ``LLM.chat``).

    Conversations are read, rendered and their images loaded only as the engine has room for
    them, on ``generate``'s mapping workers, so any iterable of them (a data set) runs in
    bounded memory.

    Args:
      llm: a model from ``mmjax.load``.
      messages: ``[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ...}},
        {"type": "text", "text": "What is this?"}]}]`` (content may also be a plain string; a
        PIL image may be given as ``{"type": "image", "image": img}``), or an iterable of such
        conversations.
      sampling_params: one for all conversations, or one each.
      chat_template: Jinja text or a file to use instead of the checkpoint's template.
      add_generation_prompt: end with the template's assistant prefix (the reply starts there).
      continue_final_message: continue the last (assistant) message instead of starting a new one.
      media: limits on fetching and decoding images given by URL.
      **generate_kwargs: as ``mmjax.generate`` (``errors``, ``stream``, ``as_completed``,
        ``use_tqdm``, ``engine_config``, ``mapping_threads``).

    Returns:
      One ``RequestOutput`` per conversation, as ``mmjax.generate`` returns.

    Raises:
      PromptError: a conversation is malformed or its images cannot be loaded (its index is
        named), as ``generate`` raises for a bad prompt; with ``errors="return"`` it gets an
        error output instead.
    """
    if _is_conversation(messages):
        conversations: Iterable[Any] = [messages]
    elif isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        raise TypeError(f"messages must be a conversation (a list of message dicts) or an iterable of them, "
                        f"got {messages!r:.80}")
    else:
        conversations = messages
    chat_template_of(llm, chat_template)  # no template: refused before any work

    def rendered(handle: Any, conversation: Sequence[Mapping[str, Any]]) -> ProcessedPrompt:
        return handle.process(chat_prompt(handle, conversation, chat_template=chat_template, media=media,
                                          add_generation_prompt=add_generation_prompt,
                                          continue_final_message=continue_final_message,
                                          tokenizer=handle.tokenizer))

    return generate_mapped(llm, conversations, sampling_params, map_prompt=rendered, **generate_kwargs)


def _is_conversation(messages: Any) -> bool:
    return isinstance(messages, Sequence) and bool(messages) and isinstance(messages[0], Mapping)
