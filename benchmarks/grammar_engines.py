"""llguidance beside xgrammar for structured output (issue 36): compile time per constraint, mask time per step.

Both engines turn a JSON schema, a regex or a grammar into per-step token bitmasks; vLLM and sglang use both.
Each engine runs in its own process on the same tokenizer:

- llguidance with this python (the project's venv: it is a runtime dependency with no dependencies of its own);
- xgrammar with ``--xgrammar-python`` (a separate venv: its wheel requires torch and triton), e.g. made with
  ``python3 -m venv /work/xgvenv && /work/xgvenv/bin/pip install torch==2.13.0`` (the CPU wheel first) and then
  ``/work/xgvenv/bin/pip install xgrammar llguidance transformers tokenizers numpy``.

There is no model hub here, and mask time grows with the vocabulary, so the tokenizers are byte-level BPEs
trained here (vocab 32000 and 128000 by default) on the .py/.md/.txt/.rst files of this venv's site-packages
(a fixed sample capped at ``--corpus-mb``), saved as ``PreTrainedTokenizerFast`` directories (eos
``<|endoftext|>``) under ``--work`` and reused by later runs.

Measured per engine and vocabulary: the import, the tokenizer info (``llguidance.hf.from_tokenizer``,
``xgr.TokenizerInfo.from_huggingface``); per constraint the cold compile (the first one in the process) and a
second compile of the same constraint (xgrammar's compiler cache off), and, over ``--repeats`` walks of a
valid output (a JSON instance tokenized whole, then eos) with a fresh matcher each, the next-token bitmask before
every token (each checked to allow that token) and the token's consumption. llguidance compiles lazily, so
its "compile" is ``grammar_from_*`` plus the ``LLMatcher`` constructor (which every new matcher repeats: one is built
per request) and part of its work lands in the first masks; xgrammar precomputes its token-mask cache in the
compile, and a matcher reuses the compiled grammar. Mask figures are microseconds a step (median and p90 over
every step of every walk), the first step's (median over the walks), and a walk's total (masks plus consumes,
the walks' median). Each engine runs ``--rounds`` processes, the engines alternated; the round with the least
sum of walk totals is kept (the machine may be shared).

    python benchmarks/grammar_engines.py --xgrammar-python /work/xgvenv/bin/python [--vocabs 32000,128000]

Prints one JSON document: the machine, the tokenizers, each engine's figures and xgrammar / llguidance ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

EOS = "<|endoftext|>"
CORPUS_SUFFIXES = (".py", ".md", ".txt", ".rst")

SMALL_OBJECT = {
    "type": "object",
    "properties": {"count": {"type": "integer"}, "color": {"type": "string", "enum": ["red", "green", "blue"]}},
    "required": ["count", "color"],
    "additionalProperties": False,
}

NESTED_ARRAYS = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 40},
                "email": {"type": "string", "pattern": "^[a-z0-9.]+@[a-z0-9]+\\.[a-z]{2,4}$"},
                "age": {"type": "integer", "minimum": 18, "maximum": 120},
            },
            "required": ["name", "email", "age"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z0-9]{8}$"},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                    "price": {"type": "number", "minimum": 0, "maximum": 10000},
                },
                "required": ["sku", "quantity", "price"],
                "additionalProperties": False,
            },
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
        "total": {"type": "number", "minimum": 0},
    },
    "required": ["order_id", "customer", "items", "tags", "total"],
    "additionalProperties": False,
}

# What pydantic's model_json_schema() writes for a model with a nested model, an Optional[...] and a Literal.
PYDANTIC_DEFS = {
    "$defs": {
        "Address": {
            "properties": {
                "street": {"title": "Street", "type": "string"},
                "city": {"title": "City", "type": "string"},
                "zip_code": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "title": "Zip Code"},
            },
            "required": ["street", "city"],
            "title": "Address",
            "type": "object",
            "additionalProperties": False,
        },
        "Role": {"enum": ["admin", "editor", "viewer"], "title": "Role", "type": "string"},
    },
    "properties": {
        "id": {"title": "Id", "type": "integer"},
        "name": {"title": "Name", "type": "string"},
        "role": {"$ref": "#/$defs/Role"},
        "home": {"$ref": "#/$defs/Address"},
        "work": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}], "default": None},
        "scores": {"items": {"type": "number"}, "title": "Scores", "type": "array"},
        "active": {"default": True, "title": "Active", "type": "boolean"},
    },
    "required": ["id", "name", "role", "home", "work", "scores", "active"],
    "title": "User",
    "type": "object",
    "additionalProperties": False,
}

# (name, kind, constraint, valid output): kind is "json_schema", "regex" or "choice" (a grammar of alternatives).
CONSTRAINTS: list[tuple[str, str, Any, str]] = [
    ("small_object", "json_schema", SMALL_OBJECT, json.dumps({"count": 42, "color": "green"})),
    ("nested_arrays", "json_schema", NESTED_ARRAYS, json.dumps({
        "order_id": "ABC-1234",
        "customer": {"name": "Ada Lovelace", "email": "ada.lovelace@example.com", "age": 36},
        "items": [{"sku": "X7Y8Z9W0", "quantity": 2, "price": 19.99},
                  {"sku": "AB12CD34", "quantity": 1, "price": 249.5},
                  {"sku": "QQ00RR11", "quantity": 12, "price": 0.75}],
        "tags": ["gift", "express"],
        "total": 298.48,
    })),
    ("pydantic_defs", "json_schema", PYDANTIC_DEFS, json.dumps({
        "id": 1017, "name": "Grace Hopper", "role": "editor",
        "home": {"street": "12 Harbor Road", "city": "Arlington", "zip_code": "22201"},
        "work": None, "scores": [0.5, 3.25, 17.0], "active": True,
    })),
    ("any_json_object", "json_schema", {"type": "object"}, json.dumps({
        "model": "llava-1.5", "temperature": 0.7, "stop": ["\n\n", "</s>"], "stream": False,
        "metadata": {"user": "u-81", "tags": ["test", "bench"], "retries": 3, "ratio": 1.5e-3},
    })),
    ("date_regex", "regex", r"\d{4}-\d{2}-\d{2}", "2024-02-29"),
    ("choice3", "choice", ["positive", "negative", "neutral"], "neutral"),
]


# ---------------------------------------------------------------------------------------------------------------
# tokenizers


def corpus_files(root: str, cap_bytes: int) -> list[str]:
    """A fixed sample (seeded shuffle of the sorted list) of root's text files, capped at cap_bytes in all."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(CORPUS_SUFFIXES)]
    random.Random(0).shuffle(paths)
    chosen, total = [], 0
    for path in paths:
        size = os.path.getsize(path)
        if size > 512 * 1024:
            continue
        chosen.append(path)
        total += size
        if total >= cap_bytes:
            break
    return chosen


def build_tokenizer(out_dir: str, vocab: int, corpus_mb: float) -> dict:
    """Train a byte-level BPE (GPT-2 style pre-tokenizer) and save it as a PreTrainedTokenizerFast directory.

    Reuses out_dir when it already holds one; returns its facts (vocab, corpus, training seconds)."""
    meta_path = os.path.join(out_dir, "build.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            return {**json.load(f), "cached": True}
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    site = next(p for p in sys.path if p.endswith("site-packages"))
    files = corpus_files(site, int(corpus_mb * 1e6))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def lines():
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield from f

    start = time.perf_counter()
    tok.train_from_iterator(lines(), trainer=trainer)
    train_s = time.perf_counter() - start
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS).save_pretrained(out_dir)
    meta = {"vocab_size": tok.get_vocab_size(), "corpus_files": len(files),
            "corpus_mb": round(sum(os.path.getsize(p) for p in files) / 1e6, 1), "train_s": round(train_s, 1)}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return {**meta, "cached": False}


# ---------------------------------------------------------------------------------------------------------------
# engines (each in its own process)


class Llguidance:
    """llguidance's documented API: hf.from_tokenizer, LLMatcher, numpy.fill_next_token_bitmask."""

    def __init__(self, hf_tokenizer: Any) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.numpy

        self.llg, self.llg_np = llguidance, llguidance.numpy
        start = time.perf_counter()
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer)
        self.tokenizer_info_s = time.perf_counter() - start
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, self.tokenizer.vocab_size)
        self.version = llguidance.__version__ if hasattr(llguidance, "__version__") else _version("llguidance")

    def compile(self, kind: str, constraint: Any) -> Any:
        M = self.llg.LLMatcher
        if kind == "json_schema":
            grammar = M.grammar_from_json_schema(constraint)
        elif kind == "regex":
            grammar = M.grammar_from_regex(constraint)
        else:
            grammar = M.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in constraint))
        matcher = self.matcher(grammar)
        return grammar if matcher is not None else None

    def matcher(self, compiled: Any) -> Any:
        m = self.llg.LLMatcher(self.tokenizer, compiled, log_level=0)
        if m.is_error():
            raise RuntimeError(m.get_error())
        return m

    def fill(self, matcher: Any) -> None:
        self.llg_np.fill_next_token_bitmask(matcher, self.bitmask)

    def consume(self, matcher: Any, token: int) -> bool:
        return matcher.consume_token(token) and not matcher.is_error()

    def mask_row(self) -> Any:
        return self.bitmask[0]


class Xgrammar:
    """xgrammar's documented API: TokenizerInfo.from_huggingface, GrammarCompiler, GrammarMatcher."""

    def __init__(self, hf_tokenizer: Any, threads: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        start = time.perf_counter()
        self.info = xgr.TokenizerInfo.from_huggingface(hf_tokenizer)
        self.tokenizer_info_s = time.perf_counter() - start
        # Cache off so that the second compile of a constraint compiles again.
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=threads, cache_enabled=False)
        self.bitmask = xgr.allocate_token_bitmask(1, self.info.vocab_size)
        self.version = xgr.__version__ if hasattr(xgr, "__version__") else _version("xgrammar")

    def compile(self, kind: str, constraint: Any) -> Any:
        if kind == "json_schema":
            return self.compiler.compile_json_schema(json.dumps(constraint))
        if kind == "regex":
            return self.compiler.compile_regex(constraint)
        return self.compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in constraint))

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matcher: Any) -> None:
        matcher.fill_next_token_bitmask(self.bitmask)

    def consume(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)

    def mask_row(self) -> Any:
        return self.bitmask[0].numpy()


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_engine(engine_name: str, tokenizer_dir: str, repeats: int, threads: int) -> dict:
    """Everything one engine is measured on, in this process."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    start = time.perf_counter()
    engine: Llguidance | Xgrammar = Llguidance(hf) if engine_name == "llguidance" else Xgrammar(hf, threads)
    setup_s = time.perf_counter() - start
    out: dict = {"engine": engine_name, "version": engine.version, "vocab_size": len(hf),
                 "import_and_tokenizer_info_s": round(setup_s, 3),
                 "tokenizer_info_s": round(engine.tokenizer_info_s, 3), "constraints": {}}
    all_steps: list[float] = []
    for name, kind, constraint, text in CONSTRAINTS:
        t0 = time.perf_counter()
        compiled = engine.compile(kind, constraint)
        t1 = time.perf_counter()
        compiled = engine.compile(kind, constraint)
        t2 = time.perf_counter()
        tokens = hf.encode(text, add_special_tokens=False) + [hf.eos_token_id]
        steps: list[float] = []
        firsts: list[float] = []
        walks: list[float] = []
        matcher_s: list[float] = []
        for _ in range(repeats):
            m0 = time.perf_counter_ns()
            matcher = engine.matcher(compiled)
            matcher_s.append((time.perf_counter_ns() - m0) / 1e3)
            walk_ns = 0
            for i, tok in enumerate(tokens):
                a = time.perf_counter_ns()
                engine.fill(matcher)
                b = time.perf_counter_ns()
                row = engine.mask_row()
                if not (int(row[tok >> 5]) >> (tok & 31)) & 1:
                    raise RuntimeError(f"{engine_name} {name}: mask forbids token {i} ({hf.decode([tok])!r})")
                c = time.perf_counter_ns()
                if not engine.consume(matcher, tok):
                    raise RuntimeError(f"{engine_name} {name}: token {i} ({hf.decode([tok])!r}) rejected")
                d = time.perf_counter_ns()
                walk_ns += (b - a) + (d - c)
                steps.append((b - a) / 1e3)
                if i == 0:
                    firsts.append((b - a) / 1e3)
            walks.append(walk_ns / 1e3)
        all_steps += steps
        out["constraints"][name] = {
            "kind": kind, "tokens": len(tokens),
            "compile_ms": round((t1 - t0) * 1e3, 3), "compile_again_ms": round((t2 - t1) * 1e3, 3),
            "matcher_us_median": round(statistics.median(matcher_s), 1),
            "mask_us_median": round(statistics.median(steps), 1), "mask_us_p90": round(_pct(steps, 0.9), 1),
            "first_mask_us_median": round(statistics.median(firsts), 1),
            "walk_us_median": round(statistics.median(walks), 1),
        }
    out["mask_us_median_all"] = round(statistics.median(all_steps), 1)
    out["mask_us_p90_all"] = round(_pct(all_steps, 0.9), 1)
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


# ---------------------------------------------------------------------------------------------------------------
# driver


def machine() -> dict:
    """CPU model, core count, load, python."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "loadavg_at_start": os.getloadavg()[0],
            "python": platform.python_version()}


def spawn(python: str, engine: str, tokenizer_dir: str, args: argparse.Namespace) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", engine, "--tokenizer-dir", tokenizer_dir,
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"engine": engine, "error": proc.stderr.strip().splitlines()[-5:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def walks_total(result: dict) -> float:
    """The sum over constraints of a walk's median microseconds (inf for a failed run)."""
    return sum(c["walk_us_median"] for c in result["constraints"].values()) if "error" not in result else 1e30


def best_round(results: list[dict]) -> dict:
    """The round with the least walks_total, plus every round's walks_total."""
    best = min(results, key=walks_total)
    return {**best, "walks_total_us_by_round": [round(walks_total(r), 1) for r in results]}


def ratios(llg: dict, xg: dict) -> dict:
    """xgrammar / llguidance for each figure both sides have (above 1: llguidance is faster)."""
    if "error" in llg or "error" in xg:
        return {}

    def r(a: float, b: float) -> float | None:
        return round(b / a, 2) if a else None

    out: dict = {"tokenizer_info": r(llg["tokenizer_info_s"], xg["tokenizer_info_s"]),
                 "mask_median_all": r(llg["mask_us_median_all"], xg["mask_us_median_all"]),
                 "mask_p90_all": r(llg["mask_us_p90_all"], xg["mask_us_p90_all"])}
    for name, a in llg["constraints"].items():
        b = xg["constraints"][name]
        out[name] = {k: r(a[k], b[k]) for k in ("compile_ms", "compile_again_ms", "mask_us_median",
                                                "mask_us_p90", "walk_us_median")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--xgrammar-python", default=None, help="python of a venv with xgrammar (none: llguidance only)")
    p.add_argument("--work", default="/tmp/grammar-bench", help="where the trained tokenizers are cached")
    p.add_argument("--vocabs", default="32000,128000")
    p.add_argument("--corpus-mb", type=float, default=48.0)
    p.add_argument("--repeats", type=int, default=5, help="walks of each valid output, a fresh matcher each")
    p.add_argument("--rounds", type=int, default=3, help="processes per engine, alternated; the best is kept")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="xgrammar's compiler max_threads")
    p.add_argument("--worker", choices=["llguidance", "xgrammar"], help=argparse.SUPPRESS)
    p.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(run_engine(args.worker, args.tokenizer_dir, args.repeats, args.threads)))
        return

    settings = {k: getattr(args, k) for k in ("rounds", "repeats", "threads", "corpus_mb")}
    report: dict = {"machine": machine(), "settings": settings, "tokenizers": {}, "runs": {}}
    for vocab in [int(v) for v in args.vocabs.split(",")]:
        tok_dir = os.path.join(args.work, f"bpe-{vocab}")
        report["tokenizers"][vocab] = build_tokenizer(tok_dir, vocab, args.corpus_mb)
        pythons = {"llguidance": sys.executable}
        if args.xgrammar_python:
            pythons["xgrammar"] = args.xgrammar_python
        rounds: dict[str, list[dict]] = {e: [] for e in pythons}
        for i in range(args.rounds):
            for engine in (list(pythons) if i % 2 == 0 else list(pythons)[::-1]):
                rounds[engine].append(spawn(pythons[engine], engine, tok_dir, args))
        run: dict = {e: best_round(r) for e, r in rounds.items()}
        if args.xgrammar_python:
            run["xgrammar_over_llguidance"] = ratios(run["llguidance"], run["xgrammar"])
        report["runs"][vocab] = run
    report["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
