"""``mmjax.chat``: messages in, through the checkpoint's own chat template, outputs out (vLLM's ``LLM.chat``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mmjax.engine.errors import PromptError
from mmjax.engine.generate import error_output, generate
from mmjax.engine.outputs import RequestOutput
from mmjax.engine.sampling_params import SamplingParams
from mmjax.registry import PromptInputs
from mmjax.serving.chat_template import find_chat_template, render_chat
from mmjax.serving.media import MediaLimits, load_image_url
from mmjax.serving.messages import ImageRef, parse_messages


def image_placeholder(llm: Any) -> str:
    """The text of the model's image placeholder token (``"<image>"`` for llava-hf checkpoints)."""
    config = llm.hf_config
    token_id = getattr(config, "image_token_index", None)
    token_id = getattr(config, "image_token_id", None) if token_id is None else token_id
    if token_id is None:
        raise ValueError(f"{llm.model_config.name} names no image token (image_token_index) in its config")
    return llm.tokenizer.convert_ids_to_tokens(int(token_id))


def image_limit(llm: Any) -> int:
    """Most images one prompt may hold (``limit_mm_per_prompt["image"]``)."""
    return int(llm.mm_registry.init_mm_limits_per_prompt(llm.model_config).get("image", 0))


def chat_template_of(llm: Any, override: str | None = None) -> str:
    """The checkpoint's chat template (``override``: Jinja text or a file), see ``find_chat_template``."""
    return find_chat_template(llm.model_config.model, llm.tokenizer, override)


def chat_prompt(
    llm: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    media: MediaLimits | None = None,
    tokenizer: Any = None,
) -> PromptInputs:
    """The prompt (text or token ids, with its images) that ``messages`` make under the chat template.

    Images given by URL are loaded here (``media``: the limits on fetching and size). Tokenized
    the way transformers' processors tokenize a chat: a rendered prompt that starts with the
    BOS text gets no second BOS.

    Raises:
      ValueError: bad messages (named by message and part), more images than the model's
        limit, an image that cannot be loaded (``MediaError``), no chat template.
    """
    tokenizer = llm.tokenizer if tokenizer is None else tokenizer
    parsed = parse_messages(messages)
    limit = image_limit(llm)
    if len(parsed.images) > limit:
        raise ValueError(f"the messages hold {len(parsed.images)} images; this model takes at most {limit} per "
                         f"prompt (limit_mm_per_prompt={{'image': {limit}}})")
    template = chat_template_of(llm, chat_template)
    placeholder = image_placeholder(llm) if parsed.images else ""
    text = render_chat(tokenizer, template, parsed.conversation, placeholder=placeholder,
                       add_generation_prompt=add_generation_prompt and not continue_final_message,
                       continue_final_message=continue_final_message)
    images = load_images(parsed.images, media or MediaLimits())
    prompt: dict[str, Any]
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        prompt = {"prompt_token_ids": list(tokenizer(text, add_special_tokens=False).input_ids)}
    else:
        prompt = {"prompt": text}
    if images:
        prompt["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
    return prompt


def load_images(refs: Sequence[ImageRef], media: MediaLimits) -> list[Any]:
    """The images of a conversation, URLs loaded within ``media``'s limits."""
    return [r.source if not isinstance(r.source, str) else load_image_url(r.source, media, r.where) for r in refs]


def chat(
    llm: Any,
    messages: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
    sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    media: MediaLimits | None = None,
    errors: str = "raise",
    **generate_kwargs: Any,
) -> list[RequestOutput] | Iterator[RequestOutput]:
    """Generate replies to one conversation or a list of them (vLLM's ``LLM.chat``).

    Args:
      llm: a model from ``mmjax.load``.
      messages: ``[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ...}},
        {"type": "text", "text": "What is this?"}]}]`` (content may also be a plain string; a
        PIL image may be given as ``{"type": "image", "image": img}``), or a list of such conversations.
      sampling_params: one for all conversations, or one each.
      chat_template: Jinja text or a file to use instead of the checkpoint's template.
      add_generation_prompt: end with the template's assistant prefix (the reply starts there).
      continue_final_message: continue the last (assistant) message instead of starting a new one.
      media: limits on fetching and decoding images given by URL.
      errors, **generate_kwargs: as ``mmjax.generate`` (``stream``, ``use_tqdm``, ``engine_config``).

    Returns:
      One ``RequestOutput`` per conversation, as ``mmjax.generate`` returns.

    Raises:
      PromptError: a conversation is malformed or its images cannot be loaded (its index is
        named), before any work; with ``errors="return"`` it gets an error output instead.
    """
    conversations = [messages] if _is_conversation(messages) else list(messages)
    if not conversations:
        raise ValueError("messages must be a conversation or a non-empty list of conversations")
    prompts: list[PromptInputs | RequestOutput] = []
    for index, conversation in enumerate(conversations):
        try:
            prompts.append(chat_prompt(llm, conversation, chat_template=chat_template, media=media,
                                       add_generation_prompt=add_generation_prompt,
                                       continue_final_message=continue_final_message))
        except (TypeError, ValueError, FileNotFoundError) as error:
            if errors != "return":
                raise PromptError(index, error) from error
            prompts.append(error_output(index, PromptError(index, error)))
    good = [i for i, p in enumerate(prompts) if not isinstance(p, RequestOutput)]
    params = sampling_params
    if params is not None and not isinstance(params, SamplingParams):
        params = list(params)
        if len(params) != len(conversations):
            raise ValueError(f"got {len(params)} sampling params for {len(conversations)} conversations")
        params = [params[i] for i in good]
    if not good:
        return prompts  # type: ignore[return-value]  (every one refused, with errors="return")
    outputs = generate(llm, [prompts[i] for i in good], params, errors=errors, **generate_kwargs)
    if generate_kwargs.get("stream") or len(good) == len(prompts):
        return outputs
    merged = list(prompts)
    for i, output in zip(good, outputs):
        merged[i] = output
    return merged  # type: ignore[return-value]


def _is_conversation(messages: Any) -> bool:
    return isinstance(messages, Sequence) and bool(messages) and isinstance(messages[0], Mapping)
