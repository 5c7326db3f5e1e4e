"""mmjax.generate with its defaults vs transformers' PyTorch generate on a Gemma 3: same checkpoint, same run.

The configuration: Gemma-3-4B's layout scaled down to run on this machine's CPU — a random
``Gemma3ForConditionalGeneration`` in the Hub layout (written by transformers itself,
``mmjax.testing.gemma3_checkpoints``) with text width 512, 12 layers in 4B's 5:1 pattern (five sliding
layers, then one full: layers 5 and 11 global), 8 query heads over 4 KV heads of 64 (4B: 8 over 4 of 256),
``query_pre_attn_scalar`` 64 (the head width, as 4B's 256), MLP 2048 (4x), vocab 32064 (the tiny
tokenizer's ids, the embedding padded; the LM head of ``generate_vs_transformers.machine_limits``), tied
embeddings, a sliding window of 128 keys (4B: 1024), local RoPE base 10^4 and global 10^6 with a linear
scaling of 8 (4B's), a 4096-token context (4B: 131072, which the CPU's 1 GiB default KV budget cannot
hold for one sequence); a SigLIP tower 384 wide, 6 heads of 64, MLP 1536, 6 layers on 224-px images of
14-px patches (16 x 16), pooled 2 x 2 into 64 soft tokens an image (4B: 896 px, 64 x 64 patches pooled
4 x 4 into 256). 8 prompts in Gemma's chat format, each one photo (of its own size and aspect ratio;
the processor resizes it to 224 x 224) and then a long text (notes of 800 to 1,570 characters, then a
~20-word question): 0.65K to 1.15K tokens, 5 to 9 windows each (4B's window over 5K to 9K-token prompts;
the 2-core host cannot prefill 8 prompts of 1-2K tokens in this model five times over in minutes); 64 new
tokens; float32; greedy, ``ignore_eos``. mmjax runs exactly as a new user would: ``mmjax.load`` then
``mmjax.generate`` with no
engine config. transformers runs one batched ``generate`` over the same 8 prompts, left-padded, with
mmjax's token ids (the image tokens expanded), ``token_type_ids`` marking the soft tokens (each image
attends to itself both ways), its own image processor's ``pixel_values``; its EOS is set to an id past
the vocabulary, so it generates exactly the new tokens and forbids none (the checkpoint's generation
config makes ``<end_of_turn>`` an EOS; ``min_new_tokens`` would suppress its logit, where mmjax's
``ignore_eos`` lets it be chosen).

Printed (JSON), the columns of ``qwen2_5_vl_vs_transformers.py``: for both sides tokens/s, time to
first token, prefill seconds, decode ms/step, the first call (load + first generate) in a fresh process
(mmjax with an empty compilation cache and with the cache the first process wrote), the vision tower
alone (``vision_s``), the machine's limits measured in the same run and each side's GFLOP/s and GB/s as
fractions of them, greedy outputs compared token for token (where a prompt differs: the first differing
step, both tokens, transformers' top-two logit gap there). The work counted is what a window allows: a
sliding layer's query attends to at most 128 keys, and a decode step reads at most 128 keys' K/V on a
sliding layer. Beside them (``window``): mmjax on the same model with every layer global
(``layer_types`` all full) on the same prompts, to show attention's cost follows the window; and
(``--bf16``, off by default: one more run) mmjax with bfloat16 weights, labelled as such (transformers stays float32).

    python benchmarks/gemma3_vs_transformers.py [--batch 8] [--new-tokens 64] [--repeats 2] [--bf16]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_vs_transformers as llava_bench  # noqa: E402
import qwen2_5_vl_vs_transformers as qwen_bench  # noqa: E402

SLIDING, FULL = "sliding_attention", "full_attention"
LAYER_TYPES = ((SLIDING,) * 5 + (FULL,)) * 2
TEXT = dict(hidden=512, layers=len(LAYER_TYPES), heads=8, kv_heads=4, head_dim=64, mlp=2048, vocab=32064,
            window=128, global_layers=LAYER_TYPES.count(FULL), context=4096, tied=True)
VISION = dict(image=224, patch=14, hidden=384, heads=6, mlp=1536, layers=6, tokens_per_image=64)
assert (TEXT["hidden"], TEXT["vocab"]) == (llava_bench.TEXT["hidden"], llava_bench.TEXT["vocab"])

#: The long text part: notes of these sentences, each prompt's from a sentence of its own on.
NOTES = [
    "The quick brown fox jumps over the lazy dog while the camera waits on a tripod near the window.",
    "Read the text in the chart: revenue grew from 12 to 31 million dollars between March and October.",
    "Two people are walking on the beach at sunset, and their long shadows stretch towards the water.",
    "A cat is sitting on a red sofa next to a window with green plants and a small wooden table.",
    "The photographer used a wide lens, so the objects near the edges look slightly bent and stretched.",
    "In the second picture the sky is darker, the street lamps are on and the windows glow in yellow.",
    "Here is the original image and here are some crops to help you see the small details better.",
    "Compare the colors on the left with those on the right: the left side is cooler and more blue.",
    "The cup of coffee on the saucer is still hot, and a thin cloud of steam rises above its rim.",
    "Numbers on the sign read 0 1 2 3 4 5 6 7 8 9 10 100 and 2026, painted in white on a green board.",
    "An astronaut in a white suit holds a flag, and the helmet reflects the bright light of the sun.",
    "The rocket stands on the launch pad in the morning, surrounded by towers, cables and trucks.",
]


def make_checkpoint(path: str, layer_types: tuple[str, ...] = LAYER_TYPES) -> str:
    """The benchmark's checkpoint at ``path`` (``layer_types``: e.g. every layer full, the same weights)."""
    from mmjax.testing.gemma3_checkpoints import make_tiny_gemma3_checkpoint

    return make_tiny_gemma3_checkpoint(
        path, seed=0, vocab_size=TEXT["vocab"], hidden_size=TEXT["hidden"], num_heads=TEXT["heads"],
        num_kv_heads=TEXT["kv_heads"], head_dim=TEXT["head_dim"], query_pre_attn_scalar=TEXT["head_dim"],
        intermediate_size=TEXT["mlp"], layer_types=tuple(layer_types), sliding_window=TEXT["window"],
        max_position_embeddings=TEXT["context"], tie_word_embeddings=TEXT["tied"],
        image_size=VISION["image"], patch_size=VISION["patch"], mm_tokens_per_image=VISION["tokens_per_image"],
        vision_hidden_size=VISION["hidden"], vision_heads=VISION["heads"],
        vision_intermediate_size=VISION["mlp"], vision_layers=VISION["layers"],
    )


def notes(i: int, chars: int) -> str:
    """About ``chars`` characters of notes, from sentence ``i`` on."""
    text, k = [], i
    while sum(len(s) + 1 for s in text) < chars:
        text.append(NOTES[k % len(NOTES)])
        k += 1
    return " ".join(text)


def prompts(batch: int, variant: int = 0) -> list[dict]:
    """``batch`` prompts in Gemma's chat format: a photo (the Qwen benchmark's: each of its own size, each
    prompt's and each ``variant``'s differing in a pixel, so new to mmjax's caches), notes and a question."""
    out = []
    for i, prompt in enumerate(qwen_bench.prompts(batch, variant)):
        text = f"My notes:\n{notes(i, 800 + 110 * i)}\n\n{qwen_bench.QUESTIONS[i % len(qwen_bench.QUESTIONS)]}"
        out.append({**prompt, "prompt": f"<bos><start_of_turn>user\n<start_of_image>{text}<end_of_turn>\n"
                                        "<start_of_turn>model\n"})
    return out


# -- the work, counted -----------------------------------------------------------------


def vision_flop_per_image() -> float:
    """FLOPs of the SigLIP tower and the projector on one image (multiply-adds count 2)."""
    n, e, f = (VISION["image"] // VISION["patch"]) ** 2, VISION["hidden"], VISION["mlp"]
    layer = 2 * n * (4 * e * e + 2 * e * f) + 4 * e * n * n  # q, k, v, o; fc1, fc2; QK^T and PV
    projector = 2 * VISION["tokens_per_image"] * e * TEXT["hidden"]
    return 2 * n * 3 * VISION["patch"] ** 2 * e + VISION["layers"] * layer + projector


def _widths() -> tuple[int, int]:
    """(query width, K/V width) of an attention layer."""
    return TEXT["heads"] * TEXT["head_dim"], TEXT["kv_heads"] * TEXT["head_dim"]


def attended_keys(n: int, window: int | None) -> int:
    """Keys the ``n`` causal queries of a prompt attend to in all, within ``window`` (None: no window)."""
    return sum(min(q + 1, window or q + 1) for q in range(n))


def prefill_flop(prompt_lens: list[int], layer_types: tuple[str, ...] = LAYER_TYPES) -> dict[str, float]:
    """FLOPs of prefilling prompts of these lengths with one image each (multiply-adds count 2)."""
    d, f, v = TEXT["hidden"], TEXT["mlp"], TEXT["vocab"]
    q_width, kv_width = _widths()
    layer_params = 2 * d * q_width + 2 * d * kv_width + 3 * d * f
    decoder = 2 * sum(prompt_lens) * layer_params * len(layer_types) + 2 * len(prompt_lens) * d * v
    attention = sum(4 * q_width * attended_keys(n, TEXT["window"] if kind == SLIDING else None)
                    for n in prompt_lens for kind in layer_types)
    vision = len(prompt_lens) * vision_flop_per_image()
    return {"decoder": decoder, "attention": attention, "vision": vision, "total": decoder + attention + vision}


def decode_bytes_per_step(contexts: list[int], layer_types: tuple[str, ...] = LAYER_TYPES,
                          bytes_per_value: int = 4) -> float:
    """Bytes a decode step must read: every decoder weight (norms included), the tied LM head once, and
    each sequence's K/V (on a sliding layer only the window's)."""
    d, f, v = TEXT["hidden"], TEXT["mlp"], TEXT["vocab"]
    q_width, kv_width = _widths()
    norms = 4 * d + 2 * TEXT["head_dim"]  # four around attention and MLP, the q and k norms
    weights = len(layer_types) * (2 * d * q_width + 2 * d * kv_width + 3 * d * f + norms) + d * v + d
    keys = sum(min(n, TEXT["window"]) if kind == SLIDING else n for n in contexts for kind in layer_types)
    return (weights + keys * 2 * kv_width) * bytes_per_value


# -- transformers ----------------------------------------------------------------------


class Reference(qwen_bench.Reference):
    """transformers' model and image processor, and the batch's inputs: mmjax's token ids (the image tokens
    expanded; left-padded), the reference processor's pixels."""

    def __init__(self, path: str):
        import torch
        from transformers import AutoImageProcessor, Gemma3ForConditionalGeneration

        self.model = Gemma3ForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.pad = self.model.generation_config.pad_token_id
        self.never = self.model.config.text_config.vocab_size  # an EOS no step can produce: past the logits

    def inputs(self, token_ids: list[list[int]], batch: list[dict]) -> dict:
        ids, mask = self.left_padded(token_ids)
        pixels = self.processor(images=[p["multi_modal_data"]["image"] for p in batch], return_tensors="pt")
        return {"input_ids": ids, "attention_mask": mask,
                "token_type_ids": (ids == self.model.config.image_token_id).long(),
                "pixel_values": pixels["pixel_values"]}

    def generate(self, inputs: dict, new_tokens: int):
        import torch

        with torch.no_grad():
            return self.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, top_k=None, top_p=None,
                                       eos_token_id=self.never, pad_token_id=self.pad)

    def image_features(self, inputs: dict):
        """The SigLIP tower and the projector on the batch's pixels."""
        return self.model.model.get_image_features(inputs["pixel_values"])

    def teacher_forced(self, inputs: dict, row: int, prefix: list[int]) -> dict:
        """The model's inputs for prompt ``row`` of the batch alone (its padding dropped), then ``prefix``."""
        import torch

        real = inputs["attention_mask"][row].bool()
        ids = torch.cat([inputs["input_ids"][row][real], torch.tensor(prefix, dtype=torch.long)])[None]
        return {"input_ids": ids, "token_type_ids": (ids == self.model.config.image_token_id).long(),
                "pixel_values": inputs["pixel_values"][row:row + 1]}


def first_call(side: str, path: str, batch_size: int, new_tokens: int) -> float:
    """Load + the first generate, in this (fresh) process; transformers' inputs from its own processor."""
    start = time.perf_counter()
    batch = prompts(batch_size)
    if side == "mmjax":
        import mmjax

        llm = mmjax.load(path)
        mmjax.generate(llm, batch, qwen_bench._params(new_tokens), use_tqdm=False)
    else:
        from transformers import AutoProcessor

        reference = Reference(path)
        processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = "left"
        inputs = processor(text=[p["prompt"] for p in batch], images=[[p["multi_modal_data"]["image"]] for p in batch],
                           return_tensors="pt", padding=True)
        reference.generate(dict(inputs), new_tokens)
    return time.perf_counter() - start


def main() -> None:
    bf16_flag = lambda parser: parser.add_argument(  # noqa: E731
        "--bf16", action="store_true", help="add mmjax with bfloat16 weights (one more run)")
    args = llava_bench.parse_args(__doc__, first_call, bf16_flag)
    if args is None:
        return
    started = time.perf_counter()
    path = args.checkpoint or make_checkpoint(tempfile.mkdtemp(prefix="mmjax-gemma3-bench-"))
    all_full = make_checkpoint(tempfile.mkdtemp(prefix="mmjax-gemma3-bench-full-"), (FULL,) * TEXT["layers"])
    first = llava_bench.first_calls(path, args, __file__)
    limits = llava_bench.machine_limits(args.batch)
    ours = qwen_bench.run_mmjax(path, args.batch, args.new_tokens, args.repeats, prompts)
    full = qwen_bench.run_mmjax(all_full, args.batch, args.new_tokens, args.repeats, prompts)
    bf16 = args.bf16 and qwen_bench.run_mmjax(path, args.batch, args.new_tokens, args.repeats, prompts, "bfloat16")
    theirs = qwen_bench.run_transformers(path, args.batch, args.new_tokens, args.repeats,
                                         qwen_bench.mmjax_token_ids(path, prompts(args.batch, args.repeats)),
                                         Reference, prompts)
    ours_ids, theirs_ids = ours.pop("token_ids"), theirs.pop("token_ids")
    same = sum(a == b for a, b in zip(ours_ids, theirs_ids))
    inputs = theirs.pop("_inputs")
    mismatches = qwen_bench.logit_gaps(theirs.pop("_reference"), inputs, ours_ids, theirs_ids)
    full_ids = full.pop("token_ids")

    contexts = [n + args.new_tokens // 2 for n in ours["prompt_lens"]]  # the mean decode step's contexts
    work, step_bytes = prefill_flop(ours["prompt_lens"]), decode_bytes_per_step(contexts)
    for side in (ours, theirs):
        llava_bench.add_rates(side, work, step_bytes, limits)
    every_full = (FULL,) * TEXT["layers"]
    full_work, full_bytes = prefill_flop(ours["prompt_lens"], every_full), decode_bytes_per_step(contexts, every_full)
    llava_bench.add_rates(full, full_work, full_bytes, limits)
    window = {
        "what": f"mmjax, the same prompts: this model (5:1 sliding:full, window {TEXT['window']}) vs every layer full",
        "sliding_5to1": {k: ours[k] for k in ("decode_ms_per_step", "prefill_s", "tokens_per_s")},
        "all_full": {k: full[k] for k in ("decode_ms_per_step", "prefill_s", "tokens_per_s", "decode_gb_per_s")},
        "decode_ms_per_step_full_over_sliding": full["decode_ms_per_step"] / ours["decode_ms_per_step"],
        "prefill_s_full_over_sliding": full["prefill_s"] / ours["prefill_s"],
        "decode_mb_per_step": {"sliding_5to1": step_bytes / 1e6, "all_full": full_bytes / 1e6},
        "attention_gflop": {"sliding_5to1": work["attention"] / 1e9, "all_full": full_work["attention"] / 1e9},
        "all_full_outputs_equal_sliding": f"{sum(a == b for a, b in zip(full_ids, ours_ids))}/{args.batch}"
                                          " (expected to differ: another model)",
    }
    if bf16:
        bf16_ids = bf16.pop("token_ids")
        bf16 = {"label": "mmjax with bfloat16 weights (transformers not run in bfloat16)",
                **{k: bf16[k] for k in ("tokens_per_s", "ttft_s", "prefill_s", "decode_ms_per_step", "vision_s")},
                "decode_gb_per_s": decode_bytes_per_step(contexts, bytes_per_value=2) / 1e6
                                   / bf16["decode_ms_per_step"],
                "greedy_outputs_equal_float32_transformers": f"{sum(a == b for a, b in zip(bf16_ids, theirs_ids))}"
                                                             f"/{args.batch}"}
    rounded = llava_bench.rounded
    config = {"batch": args.batch, "new_tokens": args.new_tokens, "dtype": "float32", "greedy": True,
              "text": TEXT, "layer_types": ["full" if t == FULL else "sliding" for t in LAYER_TYPES],
              "vision": VISION, "image_sizes_hw": qwen_bench.SIZES[:args.batch],
              "prompt_windows": [round(n / TEXT["window"], 1) for n in ours["prompt_lens"]],
              "cpu_count": os.cpu_count(), "mmjax_engine": "defaults",
              "transformers": "one batched generate, left-padded, EOS past the vocabulary"}
    report = qwen_bench.report_of(config, limits, work, step_bytes, first, ours, theirs, f"{same}/{args.batch}",
                                  mismatches)
    report["window"] = {k: rounded(v) if isinstance(v, dict) else (round(v, 3) if isinstance(v, float) else v)
                        for k, v in window.items()}
    report["mmjax_bfloat16"] = rounded(bf16) if bf16 else None
    report["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))
    print(llava_bench.summary(ours, theirs, first, f"{same}/{args.batch}",
                              decode_all_full_over_sliding=round(window["decode_ms_per_step_full_over_sliding"], 3)))

if __name__ == "__main__":
    main()
