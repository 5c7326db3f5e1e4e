"""mmjax.generate with its defaults vs transformers' PyTorch generate on a Qwen2.5-VL: same checkpoint, same run.

The configuration: Qwen2.5-VL-3B's layout scaled down to run on this machine's
CPU — a random ``Qwen2_5_VLForConditionalGeneration`` in the Hub layout (written by
transformers itself, ``mmjax.testing.qwen_checkpoints``) with text hidden 512, 8
layers, 8 heads over 2 KV heads (GQA, as 3B's 16 over 2), MLP 1376, vocab 32064
(the tiny tokenizer's ids, the embedding padded), tied embeddings (as 3B); a vision
tower 320 wide, 4 heads of 80 (3B's head width), MLP 864, 8 blocks with full
attention in blocks 3 and 7 (3B: every 8th of 32), the others windowed in 112-px
windows, 14-px patches, 2x2 merge; a pixel budget of 256 merged tokens an image
(``max_pixels = 256 * 28 * 28``). 8 prompts in Qwen's chat format, each one photo of
its own size and aspect ratio (64 to 256 image tokens: 480x640, 640x480, 256x1024,
300x300, 224x224, 720x1280, 1024x256, 400x600) and a ~20-word question; 64 new
tokens; float32; greedy, ``ignore_eos``. mmjax runs exactly as a new user would:
``mmjax.load`` then ``mmjax.generate`` with no engine config. transformers runs one
batched ``generate`` over the same 8 prompts, left-padded, with mmjax's token ids
(the placeholders expanded), its own image processor's ``pixel_values`` and
``image_grid_thw``, and ``repetition_penalty=1.0`` (the checkpoint's generation config
sets 1.05, which greedy ``SamplingParams`` do not apply).

Printed (JSON), the columns of ``generate_vs_transformers.py``: for both sides
tokens/s, time to first token, prefill seconds, decode ms/step, and the first call
(load + first generate) in a fresh process — for mmjax once with an empty
compilation cache and once with the cache the first process wrote; the machine's
limits measured in the same run (``generate_vs_transformers.machine_limits``: the
decode-shaped product there is ``[8, 512]·[512, 32064]``, this model's LM head too)
and each side's prefill GFLOP/s and decode GB/s as fractions of them. Beside them,
the vision tower alone on 8 images of the batch's sizes (``vision_s``: mmjax's encoder
calls timed to completion in a separate pass on new images, transformers'
``get_image_features`` on the same pixel values), and transformers' image-processor
seconds (outside its timed figures, as in ``generate_vs_transformers.py``; mmjax's
mapping is inside its own). The vision work counted is what transformers computes
(each window attends within itself, nothing on padding), so a tower that computes
more for the same images reads as fewer GFLOP/s. transformers' time to first token
is its best of ``--repeats`` one-token ``generate`` calls. Greedy outputs are compared
token for token; where a prompt differs, the first differing step, both tokens and
transformers' top-two logit gap there (teacher-forced on its own prefix) are given.

    python benchmarks/qwen2_5_vl_vs_transformers.py [--batch 8] [--new-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_vs_transformers as llava_bench  # noqa: E402

QUESTIONS = [
    "What is shown in this image? Describe the scene, the main objects and their colors in a few short sentences.",
    "How many people or animals can you see in the photo, and what is each of them doing right now?",
    "Which object is closest to the camera, and how far away from it is the one in the background?",
    "Compare the colors on the left side of the picture with those on the right side, and explain the difference.",
    "Was this photo taken indoors or outdoors, during the day or at night? Explain which details tell you so.",
    "Read any text or numbers you can find in the image and tell me where each of them appears.",
    "Describe the lighting of this picture: where does the light come from, and what kind of shadows does it cast?",
    "If you had to give this photograph a short title for a magazine, what would it be, and why that one?",
]
#: (height, width) of each prompt's photo: landscape, portrait, panoramas both ways, squares, a wide 720p.
SIZES = [(480, 640), (640, 480), (256, 1024), (300, 300), (224, 224), (720, 1280), (1024, 256), (400, 600)]
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
TEXT = dict(hidden=512, layers=8, heads=8, kv_heads=2, mlp=1376, vocab=32064, mrope_section=(8, 12, 12), tied=True)
VISION = dict(hidden=320, heads=4, mlp=864, depth=8, fullatt=(3, 7), window=112, patch=14, merge=2,
              max_tokens_per_image=256)
# machine_limits' decode-shaped product is that benchmark's LM head: the same shape as this model's.
assert (TEXT["hidden"], TEXT["vocab"]) == (llava_bench.TEXT["hidden"], llava_bench.TEXT["vocab"])


def make_checkpoint(path: str, tied: bool = TEXT["tied"]) -> str:
    """The benchmark's checkpoint at ``path`` (``tied=False``: the same with an LM head of its own)."""
    from mmjax.testing.qwen_checkpoints import make_tiny_qwen2_5_vl_checkpoint

    factor = VISION["patch"] * VISION["merge"]
    return make_tiny_qwen2_5_vl_checkpoint(
        path, seed=0, vocab_size=TEXT["vocab"], hidden_size=TEXT["hidden"], num_heads=TEXT["heads"],
        num_kv_heads=TEXT["kv_heads"], intermediate_size=TEXT["mlp"], num_layers=TEXT["layers"],
        mrope_section=TEXT["mrope_section"], tie_word_embeddings=tied,
        vision_hidden_size=VISION["hidden"], vision_heads=VISION["heads"],
        vision_intermediate_size=VISION["mlp"], vision_depth=VISION["depth"],
        fullatt_block_indexes=VISION["fullatt"], window_size=VISION["window"], patch_size=VISION["patch"],
        merge_size=VISION["merge"], min_pixels=4 * factor**2, max_pixels=VISION["max_tokens_per_image"] * factor**2,
    )


def prompts(batch: int, variant: int = 0) -> list[dict]:
    """``batch`` prompts of a photo (each of its own size) and a question each. Every prompt's photo
    differs from the others' in a pixel, and each ``variant`` changes another: new content to mmjax's
    caches, so a timed run does all the work of a batch of new images, as transformers does every time."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(batch):
        height, width = SIZES[i % len(SIZES)]
        photo = Image.fromarray(photos[i % len(photos)]).resize((width, height), Image.BICUBIC)
        pixels = np.array(photo)
        pixels[0, 0, 0] = (int(pixels[0, 0, 0]) + variant) % 256
        pixels[0, 1, 0] = (int(pixels[0, 1, 0]) + i) % 256
        text = f"<|im_start|>user\n{IMAGE}{QUESTIONS[i % len(QUESTIONS)]}<|im_end|>\n<|im_start|>assistant\n"
        out.append({"prompt": text, "multi_modal_data": {"image": Image.fromarray(pixels)}})
    return out


# -- the work, counted -----------------------------------------------------------------


def _window_sides(n: int, window: int) -> list[int]:
    """Sizes of the windows along one axis of ``n`` merge units (aligned at 0, the last one cut short)."""
    return [window] * (n // window) + ([n % window] if n % window else [])


def vision_flop(grid: tuple[int, int, int]) -> float:
    """FLOPs of the tower on one image of patch grid ``(t, h, w)``: the work transformers does (each window
    attends within itself; padding and masked-out pairs are not counted)."""
    t, h, w = grid
    n, e, f, m = t * h * w, VISION["hidden"], VISION["mlp"], VISION["merge"]
    patch_dim = 3 * 2 * VISION["patch"] ** 2
    units = VISION["window"] // VISION["patch"] // m  # merge units a window side
    windows = [a * b * m * m for a in _window_sides(h // m, units) for b in _window_sides(w // m, units)]
    attention_full, attention_windowed = 4 * e * t * (h * w) ** 2, 4 * e * t * sum(s * s for s in windows)
    dense = 2 * n * (4 * e * e + 3 * e * f)  # qkv, proj; gate, up, down
    full = len(VISION["fullatt"])
    blocks = VISION["depth"] * dense + full * attention_full + (VISION["depth"] - full) * attention_windowed
    wide = e * m * m
    merger = 2 * (n // (m * m)) * (wide * wide + wide * TEXT["hidden"])
    return 2 * n * patch_dim * e + blocks + merger


def prefill_flop(prompt_lens: list[int], grids: list[tuple[int, int, int]]) -> dict[str, float]:
    """FLOPs of prefilling prompts of these lengths with images of these grids (multiply-adds count 2)."""
    d, f, v, layers = TEXT["hidden"], TEXT["mlp"], TEXT["vocab"], TEXT["layers"]
    kv_width = d * TEXT["kv_heads"] // TEXT["heads"]
    layer_params = d * d * 2 + d * kv_width * 2 + 3 * d * f
    decoder = 2 * sum(prompt_lens) * layer_params * layers + 2 * len(prompt_lens) * d * v  # + the LM head, last tokens
    attention = sum(4 * d * n * (n + 1) / 2 for n in prompt_lens) * layers  # causal QK^T and PV
    vision = sum(vision_flop(g) for g in grids)
    return {"decoder": decoder, "attention": attention, "vision": vision, "total": decoder + attention + vision}


def decode_bytes_per_step(contexts: list[int], bytes_per_value: int = 4) -> float:
    """Bytes a decode step must read: every decoder weight (q/k/v biases included), the (tied) LM head
    once, and each sequence's K/V."""
    d, f, v, layers = TEXT["hidden"], TEXT["mlp"], TEXT["vocab"], TEXT["layers"]
    kv_width = d * TEXT["kv_heads"] // TEXT["heads"]
    weights = layers * (d * d * 2 + d * kv_width * 2 + 3 * d * f + 2 * d + d + 2 * kv_width) + d * v + d
    kv = sum(contexts) * layers * 2 * kv_width
    return (weights + kv) * bytes_per_value


# -- the two sides ---------------------------------------------------------------------


def _params(new_tokens: int):
    import mmjax

    return mmjax.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)


def run_mmjax(path: str, size: int, new_tokens: int, repeats: int, make_prompts=None, dtype: str | None = None) -> dict:
    """The defaults, warmed up on one batch, then timed on ``repeats`` batches it has not seen
    (``prompts`` variants 1..repeats; the last one's outputs are returned). Then the vision tower
    alone: one more batch of new images with every encoder call timed to completion.

    ``make_prompts``: another benchmark's ``prompts(batch, variant)``; ``dtype``: passed to ``mmjax.load``
    (None: the checkpoint's, as a new user gets)."""
    import jax

    import mmjax

    prompts = make_prompts or globals()["prompts"]
    llm = mmjax.load(path) if dtype is None else mmjax.load(path, dtype=dtype)
    params = _params(new_tokens)
    mmjax.generate(llm, prompts(size), params, use_tqdm=False)  # compiles what the workload needs
    engine = llm.engine()
    runs = []
    for variant in range(1, repeats + 1):
        batch = prompts(size, variant)
        for key in ("prefill_step_s", "decode_step_s", "prefill_steps", "decode_steps", "encoder_calls"):
            engine.stats[key] = 0
        start = time.perf_counter()
        first = None
        outputs = {}
        for out in mmjax.generate(llm, batch, params, stream=True):
            first = first or time.perf_counter() - start
            outputs[out.request_id] = out
        seconds = time.perf_counter() - start
        stats = dict(engine.stats)
        runs.append({"seconds": seconds, "ttft_s": first, "prefill_s": stats["prefill_step_s"],
                     "decode_ms_per_step": 1e3 * stats["decode_step_s"] / max(stats["decode_steps"], 1),
                     "prefill_steps": stats["prefill_steps"], "decode_steps": stats["decode_steps"],
                     "encoder_calls": stats["encoder_calls"]})
    done = [o for o in outputs.values() if o.finished]
    assert len(done) == len(batch) and all(len(o.token_ids) == new_tokens for o in done)
    processed = [llm.process(p) for p in batch]
    prompt_lens = [len(p.token_ids) for p in processed]
    vision_rows = [int(p.mm_kwargs["pixel_values"].shape[0]) for p in processed]
    best = min(runs, key=lambda r: r["seconds"])
    ordered = sorted(done, key=lambda o: int(o.request_id))
    token_ids = [list(o.token_ids) for o in ordered]

    # The vision tower alone (a pass of its own: timing each call to completion stalls the pipeline).
    runner, calls = engine.runner, collections.Counter()
    vision_s, per_call = [], []

    def timed(call):
        def wrapper(*args, **kwargs):
            jax.block_until_ready((runner.kv_pages, runner.arena(args[-1])))  # the work before it, done
            start = time.perf_counter()
            out = call(*args, **kwargs)
            jax.block_until_ready(runner.arena(args[-1]))
            vision_s.append(time.perf_counter() - start)
            calls[len(args[0])] += 1
            per_call.append([int(args[0][0][0]["pixel_values"].shape[0]), round(1e3 * vision_s[-1], 1)])
            return out
        return wrapper

    runner.encode_many = timed(runner.encode_many)  # encode() calls it too
    mmjax.generate(llm, prompts(size, repeats + 1), params, use_tqdm=False)
    return {**best, "tokens_per_s": len(batch) * new_tokens / best["seconds"], "config": repr(engine.config),
            "prompt_lens": prompt_lens, "vision_bucket_rows": vision_rows, "vision_s": sum(vision_s),
            "vision_calls": {f"{n} images": c for n, c in sorted(calls.items())},
            "vision_calls_rows_ms": per_call, "token_ids": token_ids}


class Reference:
    """transformers' model and image processor, and the batch's inputs: mmjax's token ids (the
    placeholders expanded; left-padded), the reference processor's pixels."""

    def __init__(self, path: str):
        import torch
        from transformers import AutoImageProcessor, Qwen2_5_VLForConditionalGeneration

        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.pad = self.model.generation_config.pad_token_id

    def left_padded(self, token_ids: list[list[int]]):
        """``input_ids`` and ``attention_mask`` of these prompts, left-padded."""
        import torch

        width = max(len(ids) for ids in token_ids)
        ids = torch.tensor([[self.pad] * (width - len(t)) + list(t) for t in token_ids], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in token_ids], dtype=torch.long)
        return ids, mask

    def inputs(self, token_ids: list[list[int]], batch: list[dict]) -> dict:
        ids, mask = self.left_padded(token_ids)
        pixels = self.processor(images=[p["multi_modal_data"]["image"] for p in batch], return_tensors="pt")
        return {"input_ids": ids, "attention_mask": mask,
                "mm_token_type_ids": (ids == self.model.config.image_token_id).int(),
                "pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}

    def image_features(self, inputs: dict):
        """The vision tower and merger on the batch's pixels."""
        return self.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])

    def teacher_forced(self, inputs: dict, row: int, prefix: list[int]) -> dict:
        """The model's inputs for prompt ``row`` of the batch alone, followed by ``prefix``."""
        import torch

        one = {k: inputs[k][row:row + 1] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
        rows = torch.cumsum(inputs["image_grid_thw"].prod(-1), 0)
        lo, hi = (int(rows[row - 1]) if row else 0), int(rows[row])
        follow = torch.tensor([prefix], dtype=torch.long)
        return {"input_ids": torch.cat([one["input_ids"], follow], 1),
                "attention_mask": torch.cat([one["attention_mask"], torch.ones_like(follow)], 1),
                "mm_token_type_ids": torch.cat([one["mm_token_type_ids"], torch.zeros_like(follow).int()], 1),
                "pixel_values": inputs["pixel_values"][lo:hi], "image_grid_thw": inputs["image_grid_thw"][row:row + 1]}

    def generate(self, inputs: dict, new_tokens: int):
        import torch

        with torch.no_grad():
            return self.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                       do_sample=False, repetition_penalty=1.0, pad_token_id=self.pad)


def mmjax_token_ids(path: str, batch: list[dict]) -> list[list[int]]:
    """The prompts' token ids as mmjax maps them (``<|image_pad|>`` expanded to each image's count)."""
    import mmjax

    llm = mmjax.load(path)
    return [list(map(int, llm.process(p).token_ids)) for p in batch]


def run_transformers(path: str, size: int, new_tokens: int, repeats: int, token_ids: list[list[int]],
                     reference_class=None, make_prompts=None) -> dict:
    """transformers' ``generate`` on the batch mmjax's last timed run saw (it caches nothing
    across calls, so the same batch again costs the same). ``reference_class`` and ``make_prompts``:
    another benchmark's ``Reference`` (the same methods) and ``prompts``."""
    import torch

    reference = (reference_class or Reference)(path)
    batch = (make_prompts or prompts)(size, repeats)
    start = time.perf_counter()
    inputs = reference.inputs(token_ids, batch)
    processor_s = time.perf_counter() - start
    with torch.no_grad():
        reference.generate(inputs, 2)  # warm-up
        first = []
        for _ in range(repeats):  # the prompt pass and the first token: time to first token
            start = time.perf_counter()
            reference.generate(inputs, 1)
            first.append(time.perf_counter() - start)
        prefill_s = min(first)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = reference.generate(inputs, new_tokens)
            times.append(time.perf_counter() - start)
        vision = []
        for _ in range(repeats):
            start = time.perf_counter()
            reference.image_features(inputs)
            vision.append(time.perf_counter() - start)
    seconds = min(times)
    width = inputs["input_ids"].shape[1]
    return {"seconds": seconds, "ttft_s": prefill_s, "prefill_s": prefill_s,
            "decode_ms_per_step": 1e3 * (seconds - prefill_s) / (new_tokens - 1),
            "tokens_per_s": len(batch) * new_tokens / seconds, "vision_s": min(vision),
            "image_processor_s": processor_s, "padded_prompt_len": width, "torch_threads": torch.get_num_threads(),
            "token_ids": out[:, width:].tolist(), "_reference": reference, "_inputs": inputs}


def logit_gaps(reference: Reference, inputs: dict, ours: list[list[int]], theirs: list[list[int]]) -> list[dict]:
    """For each prompt whose tokens differ: the first differing step, both tokens, and transformers'
    top-two logit gap there (teacher-forced on the shared prefix)."""
    import torch

    found = []
    for row, (a, b) in enumerate(zip(ours, theirs)):
        if a == b:
            continue
        step = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        with torch.no_grad():
            logits = reference.model(**reference.teacher_forced(inputs, row, b[:step])).logits[0, -1]
        top = torch.topk(logits, 2)
        found.append({"prompt": row, "first_differing_step": step, "mmjax_token": a[step],
                      "transformers_token": b[step],
                      "top2_logit_gap": round(float(top.values[0] - top.values[1]), 6),
                      "mmjax_token_logit_gap": round(float(logits.max() - logits[a[step]]), 6)})
    return found


def first_call(side: str, path: str, batch_size: int, new_tokens: int) -> float:
    """Load + the first generate, in this (fresh) process."""
    start = time.perf_counter()
    batch = prompts(batch_size)
    if side == "mmjax":
        import mmjax

        llm = mmjax.load(path)
        mmjax.generate(llm, batch, _params(new_tokens), use_tqdm=False)
    else:  # the token ids as a transformers user gets them: its tokenizer, the placeholders expanded by hand
        from transformers import AutoTokenizer

        reference = Reference(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_id = reference.model.config.image_token_id
        pixels = reference.processor(images=[p["multi_modal_data"]["image"] for p in batch])
        token_ids = []
        for prompt, (t, h, w) in zip(batch, pixels["image_grid_thw"].tolist()):
            count = t * h * w // VISION["merge"] ** 2
            ids = tokenizer(prompt["prompt"])["input_ids"]
            at = ids.index(image_id)
            token_ids.append(ids[:at] + [image_id] * count + ids[at + 1:])
        reference.generate(reference.inputs(token_ids, batch), new_tokens)
    return time.perf_counter() - start


def report_of(config: dict, limits: dict, work: dict, step_bytes: float, first: dict, ours: dict, theirs: dict,
              identical: str, mismatches: list[dict]) -> dict:
    """The printed report: the run's configuration, the machine, the work, both sides' figures, the outputs."""
    rounded = llava_bench.rounded
    return {"config": config, "machine": rounded(limits),
            "work": {"prefill_gflop": rounded({k: v / 1e9 for k, v in work.items()}),
                     "decode_mb_per_step": round(step_bytes / 1e6, 1)},
            "first_call_s": rounded(first), "mmjax": rounded(ours), "transformers": rounded(theirs),
            "identical_greedy_outputs": identical, "mismatches": mismatches}


def main() -> None:
    args = llava_bench.parse_args(__doc__, first_call)
    if args is None:
        return
    path = args.checkpoint or make_checkpoint(tempfile.mkdtemp(prefix="mmjax-qwen-bench-"))
    first = llava_bench.first_calls(path, args, __file__)
    limits = llava_bench.machine_limits(args.batch)
    ours = run_mmjax(path, args.batch, args.new_tokens, args.repeats)
    theirs = run_transformers(path, args.batch, args.new_tokens, args.repeats,
                              mmjax_token_ids(path, prompts(args.batch, args.repeats)))
    ours_ids, theirs_ids = ours.pop("token_ids"), theirs.pop("token_ids")
    same = sum(a == b for a, b in zip(ours_ids, theirs_ids))
    inputs = theirs.pop("_inputs")
    mismatches = logit_gaps(theirs.pop("_reference"), inputs, ours_ids, theirs_ids)

    grids = [tuple(g) for g in inputs["image_grid_thw"].tolist()]
    work = prefill_flop(ours["prompt_lens"], grids)
    step_contexts = [n + args.new_tokens // 2 for n in ours["prompt_lens"]]  # the mean decode step's contexts
    step_bytes = decode_bytes_per_step(step_contexts)
    for side in (ours, theirs):
        llava_bench.add_rates(side, work, step_bytes, limits)
    config = {"batch": args.batch, "new_tokens": args.new_tokens, "dtype": "float32", "greedy": True,
              "text": TEXT, "vision": VISION, "image_sizes_hw": SIZES[:args.batch], "image_grids_thw": grids,
              "cpu_count": os.cpu_count(), "mmjax_engine": "defaults",
              "transformers": "one batched generate, left-padded"}
    report = report_of(config, limits, work, step_bytes, first, ours, theirs, f"{same}/{args.batch}", mismatches)
    print(json.dumps(report, indent=1))
    print(llava_bench.summary(ours, theirs, first, f"{same}/{args.batch}"))


if __name__ == "__main__":
    main()
