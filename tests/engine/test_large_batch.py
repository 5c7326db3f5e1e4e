"""generate() over a data set: any iterable of prompts, read only as the engine has room, mapped on
worker threads, bounded in memory, with errors that name the prompt they belong to.

References: each prompt run alone (greedy decoding does not depend on the batch around it) and, for
two of them, transformers' own greedy decoding.
"""

from __future__ import annotations

import json
import pathlib
import re
import threading
import types

import pytest

import mmjax
import mmjax.llm as llm_module
from engine_fixtures import LLAVA, hf_greedy, load, picture

CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=2, max_num_batched_tokens=64, max_model_len=128)
ROOM = CONFIG.max_num_seqs  # one replica
PARAMS = mmjax.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
NUM_PROMPTS = 9


def prompt(i: int) -> dict | str:
    if i % 3 == 2:
        return f"USER: Count to {i}. ASSISTANT:"
    return {"prompt": f"USER: <image>\nWhat is in picture {i}? ASSISTANT:",
            "multi_modal_data": {"image": picture(30 + 7 * i, 50 - 3 * i, seed=i)}}


class CountingPrompts:
    """A generator-like data set that records how far it has been read."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at, self.read = n, fail_at, 0

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise OSError(f"disk read failed at row {i}")
            self.read += 1
            yield prompt(i)


@pytest.fixture(scope="module")
def llm():
    return load(LLAVA)


@pytest.fixture(scope="module")
def alone(llm):
    """Each prompt's greedy tokens, run on its own."""
    return [list(mmjax.generate(llm, prompt(i), PARAMS, engine_config=CONFIG)[0].token_ids)
            for i in range(NUM_PROMPTS)]


def assert_clean(engine):
    assert not engine.has_unfinished_requests()
    assert all(a.num_free_pages == a.num_pages - 1 for a in engine.allocators)
    assert engine.embedding_rows.num_held == 0


def test_the_reference_is_transformers_greedy(llm, alone):
    for i in (0, 1):
        assert alone[i] == hf_greedy(LLAVA, llm, prompt(i), PARAMS.max_tokens)


def test_a_generator_gives_every_prompt_its_output_in_order(llm, alone):
    prompts = CountingPrompts(NUM_PROMPTS)
    outputs = mmjax.generate(llm, iter(prompts), PARAMS, engine_config=CONFIG, use_tqdm=False)
    assert [list(o.token_ids) for o in outputs] == alone
    assert [o.prompt for o in outputs] == [p if isinstance(p, str) else p["prompt"]
                                           for p in map(prompt, range(NUM_PROMPTS))]
    assert_clean(llm.engine(CONFIG))


def test_prompts_are_read_only_as_the_engine_has_room(llm, alone):
    """At any time at most ``2 * max_num_seqs`` prompts are read and not yet finished: ``max_num_seqs``
    in the engine and as many mapped ahead."""
    prompts = CountingPrompts(NUM_PROMPTS)
    seen, held = [], []
    for index, output in mmjax.generate(llm, iter(prompts), PARAMS, engine_config=CONFIG, as_completed=True):
        seen.append(index)
        held.append(prompts.read - (len(seen) - 1))  # read, less those finished before this one
        assert list(output.token_ids) == alone[index]
    assert sorted(seen) == list(range(NUM_PROMPTS))
    assert max(held) <= 2 * ROOM
    assert held[0] <= 2 * ROOM < NUM_PROMPTS  # the first output came before the data set was read through


def test_stopping_early_reads_no_further_and_leaves_the_engine_clean(llm):
    prompts = CountingPrompts(NUM_PROMPTS)
    results = mmjax.generate(llm, iter(prompts), PARAMS, engine_config=CONFIG, as_completed=True)
    next(results)
    results.close()
    assert prompts.read <= 2 * ROOM
    assert_clean(llm.engine(CONFIG))


def test_streaming_a_generator_ends_as_each_prompt_alone(llm, alone):
    last = {}
    for output in mmjax.generate(llm, (prompt(i) for i in range(NUM_PROMPTS)), PARAMS, engine_config=CONFIG,
                                 stream=True):
        last[output.request_id] = output
    assert sorted(list(o.token_ids) for o in last.values()) == sorted(alone)
    assert all(o.finished for o in last.values())


def test_mapping_runs_on_worker_threads_and_inline_gives_the_same_outputs(llm, alone, monkeypatch):
    real, threads = llm_module.LLM.process, []

    def recording(self, inputs):
        threads.append(threading.current_thread().name)
        return real(self, inputs)

    monkeypatch.setattr(llm_module.LLM, "process", recording)
    prompts = [prompt(i) for i in range(NUM_PROMPTS)]
    pooled = mmjax.generate(llm, prompts, PARAMS, engine_config=CONFIG, mapping_threads=2, use_tqdm=False)
    assert len(threads) == NUM_PROMPTS and all(name.startswith("mmjax-map") for name in threads)
    threads.clear()
    inline = mmjax.generate(llm, prompts, PARAMS, engine_config=CONFIG, mapping_threads=0, use_tqdm=False)
    assert threads == [threading.current_thread().name] * NUM_PROMPTS
    assert [list(o.token_ids) for o in pooled] == [list(o.token_ids) for o in inline] == alone


def test_a_prompt_that_fails_in_a_worker_fails_alone_with_the_inline_error(llm, alone):
    prompts = [prompt(i) for i in range(NUM_PROMPTS)]
    prompts[4] = {"prompt": "<image>", "multi_modal_data": {"image": "not an image"}}
    for threads in (2, 0):
        outputs = mmjax.generate(llm, prompts, PARAMS, engine_config=CONFIG, errors="return",
                                 mapping_threads=threads, use_tqdm=False)
        assert outputs[4].finish_reason == "error"
        assert "prompt 4: TypeError: invalid image data of type str" in outputs[4].error
        assert [list(o.token_ids) for i, o in enumerate(outputs) if i != 4] == alone[:4] + alone[5:]
    with pytest.raises(mmjax.PromptError, match="prompt 4: TypeError: invalid image data") as caught:
        mmjax.generate(llm, iter(prompts), PARAMS, engine_config=CONFIG, mapping_threads=2)
    assert caught.value.index == 4 and isinstance(caught.value.error, TypeError)
    assert_clean(llm.engine(CONFIG))


def test_an_iterable_that_raises_is_reported_at_the_index_it_reached(llm, alone):
    fail_at = 5
    outputs = mmjax.generate(llm, CountingPrompts(NUM_PROMPTS, fail_at), PARAMS, engine_config=CONFIG,
                             errors="return", use_tqdm=False)
    assert len(outputs) == fail_at + 1
    assert [list(o.token_ids) for o in outputs[:fail_at]] == alone[:fail_at]  # those before keep their outputs
    assert outputs[fail_at].finish_reason == "error"
    assert outputs[fail_at].error == (f"prompt {fail_at}: reading it from the prompts iterable raised: "
                                      f"OSError: disk read failed at row {fail_at}")
    with pytest.raises(mmjax.PromptError, match=f"prompt {fail_at}: reading it .* OSError") as caught:
        mmjax.generate(llm, CountingPrompts(NUM_PROMPTS, fail_at), PARAMS, engine_config=CONFIG)
    assert caught.value.index == fail_at and isinstance(caught.value.error, OSError)
    assert_clean(llm.engine(CONFIG))


def test_per_prompt_parameters_from_a_sequence_or_an_iterable(llm):
    lengths = [1 + i % 4 for i in range(NUM_PROMPTS)]
    params = [mmjax.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    from_list = mmjax.generate(llm, (prompt(i) for i in range(NUM_PROMPTS)), params, engine_config=CONFIG,
                               use_tqdm=False)
    from_iter = mmjax.generate(llm, (prompt(i) for i in range(NUM_PROMPTS)), iter(params), engine_config=CONFIG,
                               use_tqdm=False)
    assert [len(o.token_ids) for o in from_list] == [len(o.token_ids) for o in from_iter] == lengths
    with pytest.raises(ValueError, match="sampling params ran out at prompt 3"):
        mmjax.generate(llm, (prompt(i) for i in range(NUM_PROMPTS)), iter(params[:3]), engine_config=CONFIG)
    with pytest.raises(ValueError, match="got 3 sampling params for 9 prompts"):
        mmjax.generate(llm, [prompt(i) for i in range(NUM_PROMPTS)], params[:3], engine_config=CONFIG)
    assert_clean(llm.engine(CONFIG))


def test_bad_arguments_are_refused_before_work(llm):
    with pytest.raises(TypeError, match="prompts must be a prompt or an iterable of prompts, got 42"):
        mmjax.generate(llm, 42)
    with pytest.raises(TypeError, match="sampling_params must be a SamplingParams or one per prompt"):
        mmjax.generate(llm, ["a"], sampling_params=0.5)
    with pytest.raises(ValueError, match=r"mapping_threads must be an int >= 0 .* got -1"):
        mmjax.generate(llm, ["a", "b"], mapping_threads=-1)
    with pytest.raises(ValueError, match=r"mapping_threads must be an int >= 0 .* got 1.5"):
        mmjax.generate(llm, "one prompt", mapping_threads=1.5)
    with pytest.raises(ValueError, match="stream=True and as_completed=True are exclusive"):
        mmjax.generate(llm, ["a"], stream=True, as_completed=True)
    assert mmjax.generate(llm, iter([]), engine_config=CONFIG) == []


def test_the_progress_bar_counts_prompts_tokens_and_input_wait(llm, capsys):
    engine = llm.engine(CONFIG)
    waited = engine.stats["input_wait_s"]
    mmjax.generate(llm, [prompt(i) for i in range(4)], PARAMS, engine_config=CONFIG, mapping_threads=0)
    bar = capsys.readouterr().err
    assert "4/4" in bar and "tok/s" in bar and "input wait" in bar
    assert engine.stats["input_wait_s"] > waited  # inline mapping is all waiting


def test_the_readme_data_set_example_runs_as_written(llm, tmp_path, monkeypatch):
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### A data set: any iterable, in bounded memory", 1)[1].split("\n### ", 1)[0]
    [example] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    rows = []
    for i in range(5):
        picture(40, 30 + i, seed=i).save(tmp_path / f"{i}.png")
        rows.append(types.SimpleNamespace(question=f"What is in picture {i}?", image_path=str(tmp_path / f"{i}.png")))
    monkeypatch.chdir(tmp_path)
    from PIL import Image

    exec(example, {"mmjax": mmjax, "Image": Image, "llm": llm, "rows": rows})
    lines = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(5))
    for line in lines:
        want = mmjax.generate(llm, {"prompt": f"USER: <image>\n{rows[line['index']].question} ASSISTANT:",
                                    "multi_modal_data": {"image": Image.open(rows[line["index"]].image_path)}},
                              mmjax.SamplingParams(max_tokens=64, temperature=0))[0]
        assert line["text"] == want.text
