"""Comparing ``mmjax.score`` with the engine's prompt logprobs, for any family: a prompt and a target text
become one prompt whose last tokens are the target's, and one ``TrainExample`` with those token ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import mmjax
from mmjax.training.examples import TrainExample


def split_example(llm: mmjax.LLM, prompt: Any, target: str) -> tuple[dict, TrainExample]:
    """``(the whole prompt, TrainExample(prompt, the target's token ids))``: the target's ids are the tokens
    the processor gives the whole text after the prompt's own (checked to be a continuation of them)."""
    text, data = (prompt, None) if isinstance(prompt, str) else (prompt["prompt"], prompt.get("multi_modal_data"))
    whole = {"prompt": text + target, **({"multi_modal_data": data} if data is not None else {})}
    head = list(llm.process(prompt).token_ids)
    ids = list(llm.process(whole).token_ids)
    if ids[:len(head)] != head or len(ids) == len(head):
        raise ValueError(f"the target {target!r} does not continue the prompt's tokens: choose another split")
    return whole, TrainExample(prompt, ids[len(head):])


def engine_target_logprobs(llm: mmjax.LLM, wholes: Sequence[dict], examples: Sequence[TrainExample],
                           config: mmjax.EngineConfig) -> list[np.ndarray]:
    """The engine's prompt logprob of each target token of each ``(whole prompt, example)``, run as one batch."""
    params = mmjax.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    outputs = mmjax.generate(llm, list(wholes), params, engine_config=config, use_tqdm=False)
    found = []
    for output, example in zip(outputs, examples):
        count = len(example.target)
        tokens = output.prompt_token_ids[-count:]
        found.append(np.array([entry[t].logprob for entry, t in zip(output.prompt_logprobs[-count:], tokens)],
                              np.float32))
    return found
