"""The README's main job, end to end, with no download.

With no model and no image it loads the demo model that ships with mmjax (a tiny
LLaVA-1.5 trained by mmjax on the shapes task), draws a new scene, saves it where
the user can open it, asks the task's three kinds of question through the engine,
and prints each answer next to the truth (``run_shapes_demo``). With a model
directory or images it runs a prompt about them (``run_demo``): a real llava-hf
checkpoint loads the same way.
"""

from __future__ import annotations

import os
import sys
import time
from importlib import resources
from typing import Any

import jax
import numpy as np
from PIL import Image
from mmjax.engine.loaded_model import LoadedModel

DEMO_PROMPT = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
#: The demo's second question about the same photo: it runs on the cached prefix (image included).
FOLLOW_UP_PROMPT = "USER: <image>\nWhat colors are in this image? ASSISTANT:"


def demo_photo() -> Image.Image:
    """The photo that ships with mmjax (NASA, public domain), 384x384 RGB."""
    with resources.files("mmjax.assets").joinpath("astronaut.jpg").open("rb") as f:
        image = Image.open(f)
        image.load()
    return image


def describe_layout(token_ids: np.ndarray, placeholders, tokenizer) -> str:
    """The prompt as text with each image's placeholder run shown as one ``[image i: n tokens at k]``."""
    parts, start = [], 0
    for i, (offset, length) in enumerate(sorted(placeholders.get("image", ()))):
        parts.append(tokenizer.decode(token_ids[start:offset]))
        parts.append(f"[image {i}: {length} tokens at {offset}]")
        start = offset + length
    parts.append(tokenizer.decode(token_ids[start:]))
    return "".join(parts)


def resolve_model(model: str | None) -> str:
    """``model``, or the demo model that ships with mmjax (announced on stdout) when it is None."""
    if model is not None:
        return model
    from mmjax.assets import demo_checkpoint

    print("No --model given: using the demo model (a tiny LLaVA-1.5 trained by mmjax to answer questions\n"
          "about drawn shapes; pass --model DIR for a real llava-hf checkpoint).")
    return demo_checkpoint()


def open_images(paths: list[str] | None) -> list[Image.Image]:
    if not paths:
        return [demo_photo()]
    images = []
    for path in paths:
        try:
            image = Image.open(path)
            image.load()
        except (OSError, SyntaxError) as err:
            raise SystemExit(f"mmjax: cannot read image {path!r}: {err}") from err
        images.append(image)
    return images


def run_demo(model: str | None = None, images: list[str] | None = None, prompt: str = DEMO_PROMPT,
             dtype: str = "float32", max_tokens: int = 24, temperature: float = 0.0, seed: int | None = None,
             stream: bool = True, mesh: Any = None, follow_up: str | None = None,
             quantization: str | None = None) -> dict:
    """Load, process, generate (streaming to stdout); ask ``follow_up`` (default: the prompt again)
    about the same images, and show what the caches saved; print it all and return it as a dict.

    ``mesh``: shard the model (``mmjax.load``'s ``mesh=``: "auto", ``{"data": d, "model": m}``, a Mesh);
    ``quantization``: ``mmjax.load``'s ("int8").
    """
    import mmjax

    path = resolve_model(model)
    pictures = open_images(images)
    start = time.perf_counter()
    llm = mmjax.load(path, dtype=dtype, limit_mm_per_prompt={"image": max(1, len(pictures))}, mesh=mesh,
                     quantization=quantization)
    if llm.mesh is not None:
        print(f"{'mesh':>14}: {dict(llm.mesh.shape)} over {llm.mesh.devices.size} {llm.mesh.devices.flat[0].platform} "
              f"devices, {jax.process_count()} process(es)")
    loaded = time.perf_counter()
    request = {"prompt": prompt, "multi_modal_data": {"image": pictures if len(pictures) > 1 else pictures[0]}}
    processed = llm.process(request)
    print(f"{'prompt':>14}: {describe_layout(processed.token_ids, processed.placeholders, llm.tokenizer)!r}")
    print(f"{'pixel_values':>14}: {'x'.join(map(str, processed.mm_kwargs['pixel_values'].shape))}")
    params = mmjax.SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    engine = llm.engine()
    print(f"{'memory':>14}: {engine.memory.describe()}")
    print(f"{'output':>14}: ", end="", flush=True)
    final, shown = None, 0
    for output in mmjax.generate(llm, request, params, stream=True):
        if stream:
            sys.stdout.write(output.text[shown:])
            sys.stdout.flush()
            shown = len(output.text)
        final = output
    done = time.perf_counter()
    print("" if stream else final.text)
    summary = {
        "model": os.fspath(path), "images": [f"{p.width}x{p.height} {p.mode}" for p in pictures],
        "prompt_tokens": len(final.prompt_token_ids), "generated_tokens": len(final.token_ids),
        "finish_reason": final.finish_reason, "text": final.text,
        "load_s": round(loaded - start, 2), "generate_s": round(done - loaded, 2),
    }
    print(f"{'finished':>14}: {final.finish_reason} after {len(final.token_ids)} tokens; "
          f"load {summary['load_s']} s, first generate (compiles) {summary['generate_s']} s")
    summary.update(ask_again(llm, {**request, "prompt": follow_up or prompt}, params))
    return summary


def ask_again(llm: LoadedModel, request: dict, params: Any) -> dict:
    """A second question about the same images; print its answer and what the caches saved."""
    import mmjax

    engine = llm.engine()
    before = engine.cache_stats()
    encoded, prefilled = engine.stats["encoded_items"], engine.stats["prefill_tokens"]
    start = time.perf_counter()
    [output] = mmjax.generate(llm, request, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    after = engine.cache_stats()
    reused = after["prefix_cache"]["hits"] - before["prefix_cache"]["hits"]
    runs = engine.stats["encoded_items"] - encoded
    print(f"{'asked again':>14}: {request['prompt']!r} -> {output.text!r} ({seconds:.2f} s)")
    print(f"{'caches':>14}: prefix cache reused {reused} of {len(output.prompt_token_ids)} prompt tokens "
          f"(computed {engine.stats['prefill_tokens'] - prefilled}); vision tower ran {runs} time(s); "
          f"processor cache {after['processor_cache'].get('hits', 0)} hit(s), "
          f"{after['processor_cache'].get('bytes', 0) / 2**20:.1f} MiB held")
    return {"again_text": output.text, "again_s": round(seconds, 2), "again_prefix_hits": reused,
            "again_encoder_runs": runs}
