"""Incremental detokenization equals a one-shot decode; stop tokens, strings, EOS and length; outputs."""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.engine.detokenizer import IncrementalDetokenizer
from mmjax.engine.outputs import CompletionOutput, Logprob, RequestOutput, logprobs_dict
from mmjax.engine.sampling_params import SamplingParams
from mmjax.testing.tokenizer import make_tiny_tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. Then, at night, the astronaut floats."
MULTILINGUAL = [
    "héllo wörld — naïve café",
    "中文的图片 描述: 一只猫坐在红色沙发上。",
    "emoji 😀🚀 mixed 👩‍👩‍👧 family ✨",
    "Ελληνικά, русский, हिन्दी, 日本語のテキスト",
    "العربية 한국어 🐈‍⬛",
]


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def decode(tok, ids, skip=True) -> str:
    return tok.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


def run(tok, ids, params, prompt=None, **kwargs):
    """Feed ids until the request finishes; check deltas add up to ``output_text`` at every step."""
    prompt = tok.encode("USER: describe ASSISTANT:") if prompt is None else prompt
    detok = IncrementalDetokenizer(tok, prompt, params, **kwargs)
    streamed, finish = "", None
    for token in ids:
        streamed += detok.append(token)
        assert streamed == detok.output_text
        finish = detok.check_stop(token)
        if finish:
            break
    return detok, streamed, finish


@pytest.mark.parametrize("skip", [True, False])
def test_random_ids_decode_as_one_shot_decode(tok, skip):
    rng = np.random.default_rng(0)
    for trial in range(60):
        ids = rng.integers(0, len(tok), rng.integers(1, 40)).tolist()
        params = SamplingParams(max_tokens=len(ids), ignore_eos=True, skip_special_tokens=skip)
        detok, streamed, finish = run(tok, ids, params)
        assert finish == ("length", None)
        assert streamed == decode(tok, ids, skip), (trial, ids)
        assert detok.token_ids == tuple(ids)


@pytest.mark.parametrize("text", MULTILINGUAL + [TEXT])
def test_multibyte_text_streams_without_replacement_chars(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert any(tok.decode([i]).endswith("\ufffd") for i in ids) or text == TEXT  # chars do span tokens
    detok = IncrementalDetokenizer(tok, tok.encode("USER:"), SamplingParams(max_tokens=1000))
    deltas = [detok.append(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == detok.output_text == text and detok.check_stop(ids[-1]) is None


def test_stop_string_spanning_tokens_truncates_before_it(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert "ick br" not in pieces and "ick" in pieces  # spans 'ick', ' ', 'br'
    params = SamplingParams(max_tokens=100, stop=["lazy", "ick br"])
    detok, streamed, finish = run(tok, ids, params)
    assert finish == ("stop", "ick br") and streamed == "The qu"
    assert detok.token_ids == tuple(ids[: pieces.index("br") + 1])  # stopped on the completing token
    kept = SamplingParams(max_tokens=100, stop=["ick br"], include_stop_str_in_output=True)
    assert run(tok, ids, kept)[1] == "The quick br"


def test_stop_string_inside_a_token_drops_the_rest_of_it(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)  # ' the' is one token
    _, streamed, finish = run(tok, ids, SamplingParams(stop="th"))
    assert finish == ("stop", "th") and streamed == "The quick brown fox jumps over "
    _, streamed, _ = run(tok, ids, SamplingParams(stop="th", include_stop_str_in_output=True))
    assert streamed == "The quick brown fox jumps over th"


def test_earliest_stop_string_wins_and_streaming_holds_back(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], SamplingParams(max_tokens=100, stop=["night", "fox"]))
    deltas = [detok.append(i) for i in ids[:4]]  # "The quick" so far
    assert "".join(deltas) == "The q"  # 4 chars held back: "night" may be starting
    _, streamed, finish = run(tok, ids, SamplingParams(max_tokens=100, stop=["night", "brown fox", "The"]))
    assert finish == ("stop", "The") and streamed == ""


def test_stop_token_ids(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)
    stop_id = ids[5]  # 'br'
    detok, streamed, finish = run(tok, ids, SamplingParams(stop_token_ids=[stop_id, 999]))
    assert finish == ("stop", stop_id) and streamed == "The quick " and detok.token_ids[-1] == stop_id
    _, streamed, _ = run(tok, ids, SamplingParams(stop_token_ids=[stop_id], include_stop_str_in_output=True))
    assert streamed == "The quick br"


def test_eos_stops_unless_ignored_and_its_text_is_never_streamed(tok):
    eos = tok.eos_token_id
    ids = tok.encode("The quick", add_special_tokens=False) + [eos] + tok.encode(" fox", add_special_tokens=False)
    for skip in (True, False):
        detok, streamed, finish = run(tok, ids, SamplingParams(skip_special_tokens=skip))
        assert finish == ("stop", None) and streamed == "The quick" and detok.token_ids[-1] == eos
    _, streamed, _ = run(tok, ids, SamplingParams(skip_special_tokens=False, include_stop_str_in_output=True))
    assert streamed == "The quick</s>"
    detok, streamed, finish = run(tok, ids, SamplingParams(ignore_eos=True, max_tokens=len(ids)))
    assert finish == ("length", None) and streamed == "The quick fox"
    _, streamed, _ = run(tok, ids, SamplingParams(skip_special_tokens=False, ignore_eos=True, max_tokens=99))
    assert streamed == "The quick</s> fox"


def test_eos_given_only_to_check_stop(tok):
    ids = tok.encode("The quick", add_special_tokens=False) + [7]  # a model whose EOS is id 7
    detok = IncrementalDetokenizer(tok, [], SamplingParams(), eos_token_id=5)
    for i in ids:
        detok.append(i)
        finish = detok.check_stop(i, eos_token_id=7)
    assert finish == ("stop", None) and detok.output_text == "The quick"


def test_length_and_misuse(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)
    detok, streamed, finish = run(tok, ids, SamplingParams(max_tokens=3, stop="zzz"))
    assert finish == ("length", None) and len(detok.token_ids) == 3 and streamed == "The qu"  # held text released
    with pytest.raises(ValueError, match="already finished"):
        detok.append(ids[3])
    fresh = IncrementalDetokenizer(tok, [], SamplingParams())
    with pytest.raises(ValueError, match=r"check_stop\(5\) must follow append\(5\)"):
        fresh.check_stop(5)


def test_engine_finish_flushes_an_incomplete_character(tok):
    ids = tok.encode("ok 😀", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], SamplingParams(max_tokens=100))
    streamed = "".join(detok.append(i) for i in ids[:-1])  # the emoji's last bytes are missing
    streamed += detok.finish("length")
    assert streamed == detok.output_text == decode(tok, ids[:-1]) and streamed.endswith("\ufffd")
    assert detok.check_stop(ids[-2]) == ("length", None)


def test_outputs_delegate_to_the_first_completion():
    lp = [logprobs_dict(5, -0.5, 2, [9, 5, 1], [-0.1, -0.5, -3.0], decode=lambda i: f"<{i}>")]
    assert lp[0] == {
        5: Logprob(-0.5, 2, "<5>"), 9: Logprob(-0.1, 1, "<9>"), 1: Logprob(-3.0, 3, "<1>"),
    }
    assert list(lp[0]) == [5, 9, 1]
    completion = CompletionOutput(index=0, text="hi", token_ids=(5,), cumulative_logprob=-0.5, logprobs=lp,
                                  finish_reason="stop", stop_reason="\n")
    out = RequestOutput(request_id="0", prompt="Say hi", prompt_token_ids=(1, 2), prompt_logprobs=None,
                        outputs=[completion], finished=True)
    assert (out.text, out.token_ids, out.finish_reason, out.logprobs) == ("hi", (5,), "stop", lp)
    assert completion.finished() and not CompletionOutput(0, "", (), None, None).finished()
