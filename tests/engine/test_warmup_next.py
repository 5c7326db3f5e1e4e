"""LLaVA-NeXT: ``warmup()`` compiles the encoder for every tile bucket, so no image shape compiles later."""

from __future__ import annotations

import mmjax
from engine_fixtures import NEXT, load, picture
from mmjax.engine import count_compilations
from mmjax.processing.anyres_layout import tile_buckets


def test_no_compilation_after_warmup_for_any_aspect_ratio():
    llm = load(NEXT)  # up to 2 images per prompt, each mapped and encoded alone: tile buckets up to 5 tiles
    config = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=320)
    engine = llm.engine(config)
    engine.warmup(prompt_logprobs=False)
    workload = [  # tiles (base + grid) of each image: 5, 3, 4 and 5, 3 and 3
        {"prompt": "USER: <image>\nSquare? ASSISTANT:", "multi_modal_data": {"image": picture(40, 41, seed=1)}},
        {"prompt": "USER: <image>\nWide? ASSISTANT:", "multi_modal_data": {"image": picture(20, 70, seed=2)}},
        {"prompt": "USER: <image> and <image>\nBoth? ASSISTANT:",
         "multi_modal_data": {"image": [picture(80, 25, seed=3), picture(33, 33, seed=4)]}},
        {"prompt": "<image><image>", "multi_modal_data": {"image": [picture(9, 31, seed=5), picture(30, 61, seed=6)]}},
        "Text only.",
    ]
    buckets = {item["pixel_values"].shape[0] for p in workload[:4] for item in llm.process(p).mm_items["image"]}
    assert len(buckets) >= 3 and buckets <= set(tile_buckets(5))  # the workload spans several tile buckets
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=3)
    with count_compilations() as compiled:
        outputs = mmjax.generate(llm, workload, params, engine_config=config, use_tqdm=False)
    assert all(o.finished for o in outputs)
    assert compiled[0] == 0, f"{compiled[0]} programs compiled after warm-up"
