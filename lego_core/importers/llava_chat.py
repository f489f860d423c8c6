"""The chat formats an imported LLaVA renders, as Jinja chat templates: the conversation formats
of haotian-liu/LLaVA the model was tuned with (`conv_llava_llama_2`, `conv_vicuna_v1`), so the
processor's prompts are the original's token for token (see `importers.llava`)."""

from __future__ import annotations

IMAGE_TOKEN = "<image>"
LLAVA_LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                        "content that the user provides, and assist the user with a variety of tasks using "
                        "natural language.")
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                   "helpful, detailed, and polite answers to the human's questions.")

_TEXT = "(parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' '))"
_PARTS = ("{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
          "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}")
_SYSTEM = ("{%- if messages and messages[0]['role'] == 'system' -%}{%- set message = messages[0] -%}" + _PARTS +
           "{%- set sys = " + _TEXT + " -%}{%- set msgs = messages[1:] -%}"
           "{%- else -%}{%- set sys = default_system -%}{%- set msgs = messages -%}{%- endif -%}")
_IMAGES = "{%- for p in parts | selectattr('type', 'equalto', 'image') -%}{{ '<image>\\n' }}{%- endfor -%}"

# conv_llava_llama_2 (SeparatorStyle.LLAMA_2), what the authors tuned and ran their VLLM with:
#   "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n<image>\n{question} [/INST]" + " {answer} </s>" + "<s>[INST] ..."
LLAVA_LLAMA_2_TEMPLATE = (
    "{%- set default_system = '" + LLAVA_LLAMA_2_SYSTEM + "' -%}" + _SYSTEM +
    "{%- for message in msgs -%}" + _PARTS +
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first -%}{{ '[INST] <<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' }}"
    "{%- else -%}{{ bos_token + '[INST] ' }}{%- endif -%}"
    + _IMAGES + "{{ " + _TEXT + " + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ ' ' }}{% generation %}{{ " + _TEXT + " + ' ' + eos_token }}{% endgeneration %}"
    "{%- endif -%}{%- endfor -%}"
)
# conv_vicuna_v1 / llava_v1 (SeparatorStyle.TWO): "{system} USER: <image>\n{q} ASSISTANT: {a}</s>USER: ..."
LLAVA_V1_TEMPLATE = (
    "{%- set default_system = \"" + LLAVA_V1_SYSTEM + "\" -%}" + _SYSTEM + "{{ sys + ' ' }}"
    "{%- for message in msgs -%}" + _PARTS +
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' }}" + _IMAGES + "{{ " + _TEXT + " + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}{% generation %}{{ " + _TEXT +
    " + eos_token }}{% endgeneration %}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)
CONVERSATIONS = {"llava_llama_2": LLAVA_LLAMA_2_TEMPLATE, "llava_v1": LLAVA_V1_TEMPLATE}
