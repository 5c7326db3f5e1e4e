"""The chat templates the Qwen vision-language Instruct checkpoints ship, verbatim.

``QWEN2_5_VL_CHAT_TEMPLATE`` is the ``chat_template`` of ``Qwen/Qwen2.5-VL-*-Instruct``'s
``chat_template.json`` (the Qwen2-VL one, unchanged); ``QWEN3_VL_CHAT_TEMPLATE`` is
``Qwen/Qwen3-VL-*-Instruct``'s (tools, tool responses with images, no thinking block).
Both put ``<|vision_start|><|image_pad|><|vision_end|>`` for an image part and the
``<|video_pad|>`` equivalent for a video part; the processor then repeats the pad token.
Split into Python literals only to keep lines short: the joined text is byte-identical
(the tests pin its SHA-256).
"""

from __future__ import annotations

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN3_VL_CHAT_TEMPLATE = "\n".join((  # noqa: FLY002 (one literal a line keeps the lines short)
    r"{%- if tools %}",
    r"    {{- '<|im_start|>system\n' }}",
    r"    {%- if messages[0].role == 'system' %}",
    r"        {%- if messages[0].content is string %}",
    r"            {{- messages[0].content }}",
    r"        {%- else %}",
    r"            {%- for content in messages[0].content %}",
    r"                {%- if 'text' in content %}",
    r"                    {{- content.text }}",
    r"                {%- endif %}",
    r"            {%- endfor %}",
    r"        {%- endif %}",
    r"        {{- '\n\n' }}",
    r"    {%- endif %}",
    (
        r'    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are '
        r'provided with function signatures within <tools></tools> XML tags:\n<tools>" }}'
    ),
    r"    {%- for tool in tools %}",
    r'        {{- "\n" }}',
    r"        {{- tool | tojson }}",
    r"    {%- endfor %}",
    (
        r'    {{- "\n</tools>\n\nFor each function call, return a json object with function name and '
        r'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, '
        r'\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}'
    ),
    r"{%- else %}",
    r"    {%- if messages[0].role == 'system' %}",
    r"        {{- '<|im_start|>system\n' }}",
    r"        {%- if messages[0].content is string %}",
    r"            {{- messages[0].content }}",
    r"        {%- else %}",
    r"            {%- for content in messages[0].content %}",
    r"                {%- if 'text' in content %}",
    r"                    {{- content.text }}",
    r"                {%- endif %}",
    r"            {%- endfor %}",
    r"        {%- endif %}",
    r"        {{- '<|im_end|>\n' }}",
    r"    {%- endif %}",
    r"{%- endif %}",
    r"{%- set image_count = namespace(value=0) %}",
    r"{%- set video_count = namespace(value=0) %}",
    r"{%- for message in messages %}",
    r'    {%- if message.role == "user" %}',
    r"        {{- '<|im_start|>' + message.role + '\n' }}",
    r"        {%- if message.content is string %}",
    r"            {{- message.content }}",
    r"        {%- else %}",
    r"            {%- for content in message.content %}",
    r"                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}",
    r"                    {%- set image_count.value = image_count.value + 1 %}",
    r"                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}",
    r"                    <|vision_start|><|image_pad|><|vision_end|>",
    r"                {%- elif content.type == 'video' or 'video' in content %}",
    r"                    {%- set video_count.value = video_count.value + 1 %}",
    r"                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}",
    r"                    <|vision_start|><|video_pad|><|vision_end|>",
    r"                {%- elif 'text' in content %}",
    r"                    {{- content.text }}",
    r"                {%- endif %}",
    r"            {%- endfor %}",
    r"        {%- endif %}",
    r"        {{- '<|im_end|>\n' }}",
    r'    {%- elif message.role == "assistant" %}',
    r"        {{- '<|im_start|>' + message.role + '\n' }}",
    r"        {%- if message.content is string %}",
    r"            {{- message.content }}",
    r"        {%- else %}",
    r"            {%- for content_item in message.content %}",
    r"                {%- if 'text' in content_item %}",
    r"                    {{- content_item.text }}",
    r"                {%- endif %}",
    r"            {%- endfor %}",
    r"        {%- endif %}",
    r"        {%- if message.tool_calls %}",
    r"            {%- for tool_call in message.tool_calls %}",
    r"                {%- if (loop.first and message.content) or (not loop.first) %}",
    r"                    {{- '\n' }}",
    r"                {%- endif %}",
    r"                {%- if tool_call.function %}",
    r"                    {%- set tool_call = tool_call.function %}",
    r"                {%- endif %}",
    r'''                {{- '<tool_call>\n{"name": "' }}''',
    r"                {{- tool_call.name }}",
    r'''                {{- '", "arguments": ' }}''',
    r"                {%- if tool_call.arguments is string %}",
    r"                    {{- tool_call.arguments }}",
    r"                {%- else %}",
    r"                    {{- tool_call.arguments | tojson }}",
    r"                {%- endif %}",
    r"                {{- '}\n</tool_call>' }}",
    r"            {%- endfor %}",
    r"        {%- endif %}",
    r"        {{- '<|im_end|>\n' }}",
    r'    {%- elif message.role == "tool" %}',
    r'        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}',
    r"            {{- '<|im_start|>user' }}",
    r"        {%- endif %}",
    r"        {{- '\n<tool_response>\n' }}",
    r"        {%- if message.content is string %}",
    r"            {{- message.content }}",
    r"        {%- else %}",
    r"            {%- for content in message.content %}",
    r"                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}",
    r"                    {%- set image_count.value = image_count.value + 1 %}",
    r"                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}",
    r"                    <|vision_start|><|image_pad|><|vision_end|>",
    r"                {%- elif content.type == 'video' or 'video' in content %}",
    r"                    {%- set video_count.value = video_count.value + 1 %}",
    r"                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}",
    r"                    <|vision_start|><|video_pad|><|vision_end|>",
    r"                {%- elif 'text' in content %}",
    r"                    {{- content.text }}",
    r"                {%- endif %}",
    r"            {%- endfor %}",
    r"        {%- endif %}",
    r"        {{- '\n</tool_response>' }}",
    r'        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}',
    r"            {{- '<|im_end|>\n' }}",
    r"        {%- endif %}",
    r"    {%- endif %}",
    r"{%- endfor %}",
    r"{%- if add_generation_prompt %}",
    r"    {{- '<|im_start|>assistant\n' }}",
    r"{%- endif %}",
    "",  # the template ends with a newline
))  # fmt: skip
