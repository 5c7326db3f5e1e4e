"""The chat template the ``google/gemma-3-*-it`` checkpoints ship, verbatim.

``GEMMA3_CHAT_TEMPLATE`` is the ``chat_template`` of ``google/gemma-3-4b-it``'s ``chat_template.json`` (the
same text is in ``google/gemma-3-1b-it``'s ``tokenizer_config.json``): ``<bos>``, a system message folded
into the first user turn, ``<start_of_turn>user\\n`` / ``<start_of_turn>model\\n`` turns ended by
``<end_of_turn>\\n``, an image part as a bare ``<start_of_image>`` (the processor expands it), text parts
trimmed. One literal a line, to keep the lines short: the joined text is byte-identical.
"""

from __future__ import annotations

GEMMA3_CHAT_TEMPLATE = "\n".join((  # noqa: FLY002 (one literal a line keeps the lines short)
    r"{{ bos_token }}",
    r"{%- if messages[0]['role'] == 'system' -%}",
    r"    {%- if messages[0]['content'] is string -%}",
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}",
    r"    {%- else -%}",
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}",
    r"    {%- endif -%}",
    r"    {%- set loop_messages = messages[1:] -%}",
    r"{%- else -%}",
    r'    {%- set first_user_prefix = "" -%}',
    r"    {%- set loop_messages = messages -%}",
    r"{%- endif -%}",
    r"{%- for message in loop_messages -%}",
    r"    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}",
    r'        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}',
    r"    {%- endif -%}",
    r"    {%- if (message['role'] == 'assistant') -%}",
    r'        {%- set role = "model" -%}',
    r"    {%- else -%}",
    r"        {%- set role = message['role'] -%}",
    r"    {%- endif -%}",
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}",
    r"    {%- if message['content'] is string -%}",
    r"        {{ message['content'] | trim }}",
    r"    {%- elif message['content'] is iterable -%}",
    r"        {%- for item in message['content'] -%}",
    r"            {%- if item['type'] == 'image' -%}",
    r"                {{ '<start_of_image>' }}",
    r"            {%- elif item['type'] == 'text' -%}",
    r"                {{ item['text'] | trim }}",
    r"            {%- endif -%}",
    r"        {%- endfor -%}",
    r"    {%- else -%}",
    r'        {{ raise_exception("Invalid content type") }}',
    r"    {%- endif -%}",
    "    {{ '<end_of_turn>\n' }}",
    r"{%- endfor -%}",
    r"{%- if add_generation_prompt -%}",
    "    {{'<start_of_turn>model\n'}}",
    r"{%- endif -%}",
    "",
))
