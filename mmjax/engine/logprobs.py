"""Recording logprobs on requests: per generated token, and per prompt token."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmjax.engine.outputs import logprobs_dict
from mmjax.engine.request import Request


def _decoder(tokenizer: Any):
    return lambda token: tokenizer.decode([token])


def record_sample(request: Request, row: int, out: Any, tokenizer: Any) -> None:
    """Add the sampled token's raw logprob, and the top ones, to ``request`` if it asked for logprobs."""
    if request.logprobs is None:
        return
    token, logprob = int(out.tokens[row]), float(out.logprobs[row])
    request.cumulative_logprob += logprob
    n = request.params.logprobs
    request.logprobs.append(logprobs_dict(token, logprob, int(out.ranks[row]), out.top_ids[row, :n],
                                          out.top_logprobs[row, :n], _decoder(tokenizer)))


def record_prompt_logprobs(chunk: Any, offset: int, result: tuple[np.ndarray, ...], tokenizer: Any) -> None:
    """Prompt logprobs of the tokens this chunk predicts (``logits[p]`` predicts token ``p + 1``).

    Positions already recorded (a request recomputed after preemption) are skipped.
    """
    request = chunk.request
    token_logprobs, ranks, top_ids, top_logprobs = result
    n = request.params.prompt_logprobs
    prompt = request.prompt_token_ids
    for position in range(chunk.start, min(chunk.stop, request.num_prompt_tokens - 1)):
        if len(request.prompt_logprobs) != position + 1:
            continue
        row = offset + position - chunk.start
        request.prompt_logprobs.append(logprobs_dict(int(prompt[position + 1]), float(token_logprobs[row]),
                                                     int(ranks[row]), top_ids[row, :n], top_logprobs[row, :n],
                                                     _decoder(tokenizer)))
