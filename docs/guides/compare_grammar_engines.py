"""Measured comparison of two grammar engines for schema-constrained decoding: xgrammar and llguidance.

Run (both engines installed; nothing is downloaded)::

    python docs/guides/compare_grammar_engines.py --schemas 100 --out /tmp/compare.json

For each engine, on two vocabularies:

- ``byte``: the shipped models' byte tokenizer, 256 byte tokens + 12 specials (vocab 268), described
  to each engine as raw byte tokens, the specials as special tokens;
- ``bpe``: a byte-level BPE tokenizer (``tokenizers``) trained here, offline, on this repository's
  Markdown and on JSON instances of the schemas, ``--bpe-vocab`` tokens (multi-byte tokens that
  straddle JSON punctuation, like a real model's);

it compiles the same JSON schemas (as written, or with ``--bounded`` as sleepagent bounds them;
seeded random schemas with nested objects, arrays, enums, bounded integers and numbers, strings
with length bounds, booleans, required/optional keys, anyOf, $ref), then
samples one output per schema by a seeded random walk over the allowed tokens (uniform over allowed
tokens; the end token whenever it is allowed), timing every mask computation and every token
advance, and validates each finished output with ``jsonschema``. The report: versions, tokenizer
setup time, compile time per schema (median, p90, max), mask time per token (median, p99),
advance time per token, outputs valid / finished / compile errors.

The two engines see identical schemas and the same walk seed; the walks differ once the engines
allow different token sets (e.g. whitespace), so validity, not identical text, is compared.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
BYTE_SPECIALS = ("<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>",
                 "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
BYTE_END = 256 + BYTE_SPECIALS.index("<|end|>")


# ---------------------------------------------------------------------------------------------- schemas
def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """One random JSON schema; objects nest up to depth 2; every string/array is length-bounded."""
    kinds = ["string", "integer", "number", "boolean", "enum", "array", "object", "anyof"]
    weights = [4, 3, 3, 2, 2, 2 if depth < 2 else 0, 3 if depth < 2 else 0, 1]
    kind = rng.choices(kinds, weights)[0]
    if kind == "string":
        s: dict = {"type": "string", "maxLength": rng.randint(0, 12)}
        if rng.random() < 0.3:
            s["minLength"] = rng.randint(0, s["maxLength"])
        return s
    if kind == "integer":
        lo = rng.randint(-1000, 1000)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 5000)}
    if kind == "number":
        lo = round(rng.uniform(-100, 100), 2)
        return {"type": "number", "minimum": lo, "maximum": round(lo + rng.uniform(0.5, 500), 2)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        pool = ["red", "green", "blue", "a b", 'quo"te', "ünï", 1, 2.5, None, True]
        return {"enum": rng.sample(pool, rng.randint(1, 4))}
    if kind == "anyof":
        return {"anyOf": [random_schema(rng, 2), random_schema(rng, 2)]}
    if kind == "array":
        lo = rng.randint(0, 2)
        return {
            "type": "array",
            "items": random_schema(rng, depth + 1),
            "minItems": lo,
            "maxItems": lo + rng.randint(0, 3),
        }
    keys = rng.sample(
        ["id", "name", "kind", "value", "items", "meta", "tags", "x", "longer_key", "ok"], rng.randint(1, 5)
    )
    props = {k: random_schema(rng, depth + 1) for k in keys}
    return {"type": "object", "properties": props, "required": [k for k in keys if rng.random() < 0.6],
            "additionalProperties": False}


def fixed_schemas() -> list[dict]:
    """Schemas as agent builders write them: a pydantic model with $defs/$ref, a tool's parameters."""
    from pydantic import BaseModel, Field

    class Address(BaseModel):
        street: str = Field(max_length=20)
        city: str = Field(max_length=12)

    class Person(BaseModel):
        name: str = Field(max_length=16)
        age: int = Field(ge=0, le=130)
        emails: list[str] = Field(max_length=2)
        address: Address | None = None

    person = Person.model_json_schema()
    tool = {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 24}},
            "required": ["expression"], "additionalProperties": False}
    return [person, tool]


def schema_set(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = fixed_schemas()
    while len(out) < n:
        s = random_schema(rng)
        if s.get("type") != "object":  # a top-level value is usually an object; keep some scalars
            s = s if rng.random() < 0.2 else {"type": "object", "properties": {"v": s}, "required": ["v"],
                                               "additionalProperties": False}
        out.append(s)
    return out


# ---------------------------------------------------------------------------------------------- tokenizers
def byte_vocab() -> list[bytes]:
    return [bytes([i]) for i in range(256)] + [s.encode() for s in BYTE_SPECIALS]


def train_bpe(vocab_size: int, schemas: list[dict], seed: int = 0):
    """A byte-level BPE tokenizer trained offline on the repo's Markdown and JSON instances."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p.read_text(errors="ignore") for p in sorted(ROOT.rglob("*.md")) if ".venv" not in p.parts]
    rng = random.Random(seed)
    for s in schemas * 20:
        texts.append(json.dumps(instance(s, rng)))
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def instance(s: dict, rng: random.Random):
    """A value roughly of schema ``s`` (training text for the BPE; validity not needed)."""
    if "enum" in s:
        return rng.choice(s["enum"])
    if "anyOf" in s:
        return instance(rng.choice(s["anyOf"]), rng)
    t = s.get("type")
    if t == "object":
        return {k: instance(v, rng) for k, v in s.get("properties", {}).items()}
    if t == "array":
        return [instance(s.get("items", {}), rng) for _ in range(rng.randint(0, 3))]
    if t == "integer":
        return rng.randint(-500, 500)
    if t == "number":
        return round(rng.uniform(-100, 100), 2)
    if t == "boolean":
        return rng.random() < 0.5
    return "".join(rng.choice("abcdef ghijk") for _ in range(rng.randint(0, 8)))


# ---------------------------------------------------------------------------------------------- engines
class XGrammarEngine:
    name = "xgrammar"

    def __init__(self, vocab: str, hf_tok=None) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        t = time.perf_counter()
        if vocab == "byte":
            # specials as "" : xgrammar treats empty-text tokens as special (never text)
            enc = byte_vocab()[:256] + [b""] * len(BYTE_SPECIALS)
            self.info = xgr.TokenizerInfo(enc, xgr.VocabType.RAW, vocab_size=268, stop_token_ids=[BYTE_END])
            self.eos = BYTE_END
        else:
            self.info = xgr.TokenizerInfo.from_huggingface(hf_tok, vocab_size=len(hf_tok))
            self.eos = hf_tok.eos_token_id
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.setup_s = time.perf_counter() - t
        self.vocab_size = self.info.vocab_size

    def compile(self, schema: dict):
        cg = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
        return self.xgr.GrammarMatcher(cg)

    def fill(self, m, bitmask: torch.Tensor) -> None:
        m.fill_next_token_bitmask(bitmask)

    def advance(self, m, token: int) -> bool:
        return m.accept_token(token)

    def done(self, m) -> bool:
        return m.is_terminated()


class LLGuidanceEngine:
    name = "llguidance"

    def __init__(self, vocab: str, hf_tok=None) -> None:
        import llguidance as llg

        self.llg = llg
        t = time.perf_counter()
        if vocab == "byte":
            self.tok = llg.LLTokenizer(llg.TokenizerWrapper(_ByteWrapper()))
            self.eos = BYTE_END
        else:
            from llguidance.hf import from_tokenizer

            self.tok = from_tokenizer(hf_tok)
            self.eos = hf_tok.eos_token_id
        self.setup_s = time.perf_counter() - t
        self.vocab_size = self.tok.vocab_size

    def compile(self, schema: dict):
        g = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        m = self.llg.LLMatcher(self.tok, g, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def fill(self, m, bitmask: torch.Tensor) -> None:
        m.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.numel() * 4)

    def advance(self, m, token: int) -> bool:
        return m.consume_token(token)

    def done(self, m) -> bool:
        return m.is_stopped()


class _ByteWrapper:
    """The byte tokenizer as llguidance's TokenizerWrapper expects: bytes of every token id."""

    def __init__(self) -> None:
        self.tokens = byte_vocab()
        self.eos_token_id = BYTE_END
        self.bos_token_id = None
        self.special_token_ids = list(range(256, 268))

    def __call__(self, s):
        return list(s.encode() if isinstance(s, str) else s)


# ---------------------------------------------------------------------------------------------- run
def run_engine(engine, schemas: list[dict], decode, max_tokens: int, seed: int, originals: list[dict]) -> dict:
    """Compile each schema, walk it, validate the output against the original schema."""
    import jsonschema

    compile_s, mask_s, adv_s = [], [], []
    valid = finished = errors = 0
    failures: list[dict] = []
    words = (engine.vocab_size + 31) // 32
    bitmask = torch.zeros(words, dtype=torch.int32)
    for i, schema in enumerate(schemas):
        t = time.perf_counter()
        try:
            m = engine.compile(schema)
        except Exception as e:  # an engine that rejects a schema: counted, not fatal
            errors += 1
            failures.append({"schema": i, "error": str(e)[:200]})
            continue
        compile_s.append(time.perf_counter() - t)
        rng = random.Random(seed * 100003 + i)
        out: list[int] = []
        for _ in range(max_tokens):
            t = time.perf_counter()
            engine.fill(m, bitmask)
            mask_s.append(time.perf_counter() - t)
            bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")[: engine.vocab_size]
            allowed = np.flatnonzero(bits)
            if len(allowed) == 0:
                break
            nxt = engine.eos if bits[engine.eos] else int(rng.choice(allowed))
            t = time.perf_counter()
            ok = engine.advance(m, nxt)
            adv_s.append(time.perf_counter() - t)
            if not ok:
                failures.append({"schema": i, "error": f"rejected its own allowed token {nxt}"})
                break
            if nxt == engine.eos:
                break
            out.append(nxt)
        else:
            failures.append({"schema": i, "error": f"not finished in {max_tokens} tokens"})
            continue
        finished += 1
        text = decode(out)
        try:
            jsonschema.validate(json.loads(text), originals[i])
            valid += 1
        except Exception as e:  # json or jsonschema: any failure is an invalid output
            failures.append({"schema": i, "error": f"invalid: {str(e)[:120]}", "text": text[:200]})
    def ms(xs, q):
        return round(1000 * float(np.quantile(xs, q)), 4) if xs else None
    return {
        "setup_ms": round(engine.setup_s * 1000, 2),
        "compile_ms": {
            "median": ms(compile_s, 0.5),
            "p90": ms(compile_s, 0.9),
            "max": ms(compile_s, 1.0),
            "total": round(1000 * sum(compile_s), 1),
        },
        "mask_ms_per_token": {
            "median": ms(mask_s, 0.5),
            "p99": ms(mask_s, 0.99),
            "mean": round(1000 * statistics.fmean(mask_s), 4) if mask_s else None,
        },
        "advance_ms_per_token": {"median": ms(adv_s, 0.5), "p99": ms(adv_s, 0.99)},
        "tokens": len(mask_s),
        "schemas": len(schemas),
        "compile_errors": errors,
        "finished": finished,
        "valid": valid,
        "failures": failures[:10],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schemas", type=int, default=100)
    ap.add_argument("--bpe-vocab", type=int, default=8192)
    ap.add_argument("--max-tokens", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bounded", action="store_true",
                    help="compile the schemas as sleepagent bounds them (sleepagent.runtime.grammar.bound_schema)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    schemas = schema_set(args.schemas, args.seed)
    originals = schemas
    if args.bounded:
        from sleepagent.runtime.grammar import bound_schema

        schemas = [bound_schema(s) for s in schemas]
    t = time.perf_counter()
    hf_tok = train_bpe(args.bpe_vocab, schemas, args.seed)
    bpe_s = time.perf_counter() - t
    report = {
        "command": f"python docs/guides/compare_grammar_engines.py --schemas {args.schemas} "
        f"--bpe-vocab {args.bpe_vocab} "
        f"--max-tokens {args.max_tokens} --seed {args.seed}" + (" --bounded" if args.bounded else ""),
        "versions": {p: version(p) for p in ("xgrammar", "llguidance", "torch", "tokenizers", "jsonschema")},
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "bpe": {"vocab": len(hf_tok), "train_s": round(bpe_s, 2)},
        "results": {},
    }
    decoders = {"byte": lambda ids: bytes(ids).decode("utf-8", errors="replace"),
                "bpe": lambda ids: hf_tok.decode(ids)}
    for vocab in ("byte", "bpe"):
        for cls in (XGrammarEngine, LLGuidanceEngine):
            engine = cls(vocab, hf_tok)
            r = run_engine(engine, schemas, decoders[vocab], args.max_tokens, args.seed, originals)
            report["results"][f"{engine.name}/{vocab}"] = r
            print(
                f"{engine.name:10s} {vocab:4s} vocab={engine.vocab_size:5d} setup={r['setup_ms']}ms "
                f"compile={r['compile_ms']} mask={r['mask_ms_per_token']} adv={r['advance_ms_per_token']} "
                f"valid={r['valid']}/{r['schemas']} finished={r['finished']} errors={r['compile_errors']}",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
