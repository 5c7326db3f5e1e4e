"""Property-based fuzzing of the input path and of generate(): any input works or is refused cleanly.

``hypothesis`` draws prompts (text with random markers and odd characters, token
ids of any value and type, mixes of images of random sizes and modes, arrays
of random shapes and dtypes, junk in every field, random ``mm_processor_kwargs``)
and random sampling parameters. Every input either works, or is refused with
one of the documented errors: ``PromptError`` wrapping a ``TypeError`` or
``ValueError`` (``generate``), those two themselves (``process_prompt``,
``SamplingParams``). Never another exception, and after every call the engine
holds no request and all its pages and arena rows are free.

``MMJAX_FUZZ_EXAMPLES`` sets the example budget (the suite's default keeps it short).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmjax
from engine_fixtures import LLAVA, load

EXAMPLES = int(os.environ.get("MMJAX_FUZZ_EXAMPLES", "25"))
CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=3, max_num_batched_tokens=64, max_model_len=160)
MODES = ["RGB", "L", "RGBA", "P", "CMYK", "1", "LA", "I", "F", "I;16", "YCbCr", "HSV"]

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def llm():
    return load(LLAVA)


def images():
    size = st.tuples(st.integers(1, 70), st.integers(1, 70))
    return st.builds(lambda mode, wh, seed: _image(mode, wh, seed), st.sampled_from(MODES), size, st.integers(0, 9))


def _image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def arrays():
    shapes = st.lists(st.integers(0, 30), min_size=0, max_size=4).map(tuple)
    dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.bool_, np.float16])
    fill = st.sampled_from([0.0, 1.0, np.nan, np.inf])
    return st.builds(lambda shape, dtype, value: np.full(shape, value).astype(dtype), shapes, dtypes, fill)


def junk():
    return st.one_of(st.none(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5),
                     st.binary(max_size=5), st.just(object()), st.lists(st.integers(), max_size=3))


def image_data():
    item = st.one_of(images(), arrays(), junk())
    return st.one_of(item, st.lists(item, max_size=4))


def texts():
    pieces = st.sampled_from(["USER: ", "<image>", "\n", " ASSISTANT:", "what", " is", "\udcff", "😀", "\x00",
                              "<s>", "</s>", "   "])
    return st.lists(pieces, max_size=12).map("".join)


def token_ids():
    ids = st.one_of(st.integers(-3, 400), st.just(32000), st.floats(-1, 400), st.text(max_size=2), st.none())
    return st.one_of(st.lists(ids, max_size=30), st.just(np.arange(5)), junk())


def image_prompts():
    """Well-formed prompts: as many <image> markers as images (0 to 2), images of any size and mode."""
    def build(images, words, as_ids):
        text = "USER: " + "<image>\n" * len(images) + words + " ASSISTANT:"
        prompt = {"prompt": text}
        if images:
            prompt["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
        return prompt
    return st.builds(build, st.lists(images(), max_size=2), st.text("abc xyz", max_size=20), st.booleans())


def prompts():
    mm = st.dictionaries(st.sampled_from(["image", "audio", "video", "imag"]), image_data(), max_size=2)
    kwargs = st.dictionaries(st.sampled_from(["do_resize", "size", "bogus", "crop_size"]), junk(), max_size=2)
    text_prompt = st.fixed_dictionaries({"prompt": st.one_of(texts(), junk())},
                                        optional={"multi_modal_data": st.one_of(mm, junk()),
                                                  "mm_processor_kwargs": st.one_of(kwargs, junk())})
    ids_prompt = st.fixed_dictionaries({"prompt_token_ids": token_ids()},
                                       optional={"multi_modal_data": mm, "unknown_key": junk()})
    return st.one_of(image_prompts(), image_prompts(), texts(), text_prompt, ids_prompt, junk())


def sampling_kwargs():
    """Valid sampling parameters, and now and then one field out of range or of the wrong type."""
    valid = {
        "max_tokens": st.integers(1, 3), "temperature": st.floats(0, 2), "top_k": st.integers(-1, 50),
        "top_p": st.floats(0.05, 1), "min_p": st.floats(0, 1), "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2), "repetition_penalty": st.floats(0.5, 2),
        "seed": st.one_of(st.none(), st.integers(0, 2**31 - 1)),
        "stop": st.one_of(st.none(), st.text("ab ", min_size=1, max_size=3)),
        "stop_token_ids": st.one_of(st.none(), st.lists(st.integers(0, 383), max_size=2)),
        "logprobs": st.one_of(st.none(), st.integers(0, 20)),
        "prompt_logprobs": st.one_of(st.none(), st.integers(0, 5)),
        "ignore_eos": st.booleans(),
    }
    invalid = st.one_of(
        st.tuples(st.sampled_from(sorted(valid)), junk()),
        st.tuples(st.just("temperature"), st.floats(-3, -0.01)), st.tuples(st.just("top_p"), st.floats(1.01, 3)),
        st.tuples(st.just("logprobs"), st.integers(21, 100)), st.tuples(st.just("n"), st.integers(2, 4)),
        st.tuples(st.just("max_tokens"), st.integers(-3, 0)), st.tuples(st.just("seed"), st.integers(-9, -1)),
    )
    base = st.fixed_dictionaries({}, optional=valid)
    return st.one_of(base, base, base, st.builds(lambda kw, bad: {**kw, bad[0]: bad[1]}, base, invalid))


def assert_clean(engine) -> None:
    assert not engine.has_unfinished_requests()
    assert all(a.num_free_pages == a.num_pages - 1 for a in engine.allocators)
    assert engine.embedding_rows.num_held == 0


@settings(max_examples=EXAMPLES * 3, deadline=None, suppress_health_check=list(HealthCheck))
@given(prompt=prompts())
def test_process_prompt_works_or_raises_a_documented_error(llm, prompt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            processed = llm.process(prompt)
        except (TypeError, ValueError) as error:
            event(f"refused: {type(error).__name__}")
            return
    event(f"processed, {len(processed.mm_kwargs)} mm kwargs")
    assert len(processed.token_ids) >= 1


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(prompts(), min_size=1, max_size=3), kwargs=sampling_kwargs(),
       errors=st.sampled_from(["raise", "return"]))
def test_generate_works_or_refuses_and_leaves_the_engine_clean(llm, batch, kwargs, errors):
    engine = llm.engine(CONFIG)
    try:
        params = mmjax.SamplingParams(**kwargs)
    except (TypeError, ValueError) as error:
        event(f"sampling params refused: {type(error).__name__}")
        return
    params = mmjax.SamplingParams(**{**kwargs, "max_tokens": min(params.max_tokens, 3)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            outputs = mmjax.generate(llm, batch, params, engine_config=CONFIG, errors=errors, use_tqdm=False)
        except mmjax.PromptError as error:
            assert errors == "raise" and isinstance(error.error, (TypeError, ValueError)), error
            event(f"refused: {type(error.error).__name__}")
            outputs = None
    if outputs is not None:
        assert len(outputs) == len(batch)
        event(f"generated {sum(o.error is None for o in outputs)} of {len(outputs)}")
        for out in outputs:
            assert (out.error is not None) == (out.outputs[0].finish_reason == "error")
            assert out.error is None or out.error.startswith("prompt "), out.error
    assert_clean(engine)
