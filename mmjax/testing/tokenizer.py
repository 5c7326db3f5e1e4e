"""A small, real byte-level BPE tokenizer for tiny test checkpoints and the demo.

No model hub is reachable where mmjax's tests run, so tiny checkpoints carry a
tokenizer trained here, in milliseconds, on a fixed corpus. It is an ordinary
``PreTrainedTokenizerFast`` saved in the llava-hf layout (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``), so the code that loads
a user's real checkpoint loads it too.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")

#: The chat template the llava-hf LLaVA-1.5 checkpoints ship (``chat_template.jinja``): images first, then text.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: The Mistral-style chat template of llava-hf's LLaVA-NeXT (``llava-v1.6-mistral-7b-hf``).
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ ' ' + content['text'] }}{% endgeneration %}{% endfor %}{{ eos_token }}"
    "{% endif %}{% endfor %}"
)

_CORPUS = """
What is shown in this image? Describe the picture in detail.
USER: What animal is this? ASSISTANT: It is a cat sitting on a red sofa.
The astronaut floats above the earth. A camera, a coffee cup and a rocket.
How many people are in the photo? There are two people walking on the beach.
Compare the two images and tell me which one was taken at night.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9
""".strip().splitlines()


def make_tiny_tokenizer(
    vocab_size: int = 384, chat_template: str = LLAVA_CHAT_TEMPLATE, corpus: list[str] | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with ``<image>`` as a single special token.

    Args:
      vocab_size: total vocabulary including the special tokens and ``<image>``;
        must be at least 262 (256 byte symbols + 5 specials + 1 merge).
      chat_template: saved as the checkpoint's ``chat_template.jinja`` (default: llava-hf's LLaVA-1.5 one).
      corpus: lines to learn the merges from (default: a few generic lines about pictures).

    Returns:
      A tokenizer whose ids are all ``< vocab_size``. ``<image>`` is the last id.
    """
    if vocab_size < 262:
        raise ValueError(f"vocab_size must be >= 262 for a byte-level BPE, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((_CORPUS if corpus is None else list(corpus)) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        add_bos_token=True,
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    fast.chat_template = chat_template
    if len(fast) > vocab_size:
        raise AssertionError(f"tokenizer has {len(fast)} ids, more than vocab_size={vocab_size}")
    return fast
