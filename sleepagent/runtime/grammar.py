"""Schema-constrained decoding: a JSON schema, or the tool-call syntax, as a logits mask.

Two kinds of constraint, one object (:class:`GrammarConstraint`), one grammar engine
(`llguidance <https://github.com/guidance-ai/llguidance>`_; why this one, measured against xgrammar:
``docs/guides/constrained-decoding.md``):

- :func:`json_constraint`: the turn is one JSON value valid against a JSON schema (what
  ``Agent(output_type=Model)`` and the server's ``response_format: {"type": "json_schema"}`` ask).
- :func:`tool_call_constraint`: the turn is ``<tool_call>{"name": "<tool>", "arguments": <JSON valid
  against that tool's parameters schema>}</tool_call>`` under a ``tool_choice`` ("auto": free text,
  then calls if any; "none": free text only; "required": one or more calls; a tool's name: one call
  of that tool). With the byte tokenizer the tags are its single special tokens; with a transformers
  tokenizer they are whatever token the tokenizer has for them, else text.

Termination. A small model under a mask can loop forever inside a string, an array or the digits of
a number. So every schema is first *bounded* (:func:`bound_schema`): each string gets a
``maxLength``, each array a ``maxItems``, each number bounds and a finite number of decimals, each
free-form object a finite key set, each ``$ref`` cycle a finite depth. The bounded schema accepts a
subset of what the original accepts, so whatever is generated is valid against the original; and
its longest serialisation is finite and computed (:func:`max_json_bytes`, in bytes, hence in tokens
for any tokenizer whose tokens carry at least one byte). The caps are the largest of
:data:`LIMITS_LADDER` whose longest value fits the token budget, so **any** token sequence the mask
allows (greedy, sampled, adversarial) completes the value and reaches an end token within
``max_tokens``. A tool call is likewise bounded, and a call may only *start* while the rest of the
budget holds the longest call.

Contract with the decoding loop (the loop of :func:`sleepagent.runtime.generate.generate_turn`)::

    c = json_constraint(tokenizer, schema, max_tokens=N)     # N: the loop's iterations, end token included
    emitted = []
    for _ in range(N):
        nxt = pick(c.apply(logits, emitted))                 # disallowed ids at -inf
        if nxt in c.end_ids: break                           # c.is_complete() is True here
        logits = step(nxt); emitted.append(nxt)

``apply`` advances the grammar over whatever ``emitted`` gained since the last call (so it works as
the ``constraint`` of :class:`~sleepagent.runtime.generate.Sampler` unchanged); :meth:`advance`
does it explicitly. The end ids are allowed exactly when the text so far is complete; on the last
iteration only they are. Feeding a token the mask did not allow raises
:class:`~sleepagent.errors.ModelBehaviorError`.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import torch

from ..errors import ConfigError, ModelBehaviorError

__all__ = [
    "DEFAULT_SEPARATORS",
    "LIMITS_LADDER",
    "GrammarConstraint",
    "Limits",
    "bench_constrained",
    "bound_schema",
    "json_constraint",
    "max_json_bytes",
    "supports_tokenizer",
    "tool_call_constraint",
    "tool_schemas",
]

logger = logging.getLogger(__name__)

DEFAULT_SEPARATORS: tuple[str, str] = (", ", ": ")
"""(item separator, key separator): ``json.dumps``'s defaults, the spacing the shipped models saw in
every tool call they were trained on."""

# JSON escapes allowed inside strings: no \uXXXX, so a character costs at most 4 bytes (UTF-8) and an
# escape 2; control characters other than \n \r \t \b \f become unrepresentable, which a generated
# value can do without.
_ESCAPES = 'nrbtf\\"'
_BYTES_PER_CHAR = 4
# JSON-schema keywords that only annotate; dropped from the bounded schema (a smaller grammar)
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "discriminator", "x-guidance", "$anchor", "contentMediaType", "contentEncoding",
})
# string formats whose values have a bounded length of their own (RFC 3339 / 4122 / 791 / 4291)
_FORMAT_LEN = {"date": 10, "time": 32, "date-time": 40, "uuid": 36, "ipv4": 15, "ipv6": 45}


# ------------------------------------------------------------------------------------------ limits
@dataclass(frozen=True, kw_only=True)
class Limits:
    """Caps put on every unbounded repetition of a schema (a schema's own tighter bounds win; its
    own minimums are kept, so a cap never makes a schema unsatisfiable).

    string:      characters per string
    items:       items per array
    properties:  keys of a free-form object (a ``dict[str, X]``); objects with declared
                 ``properties`` get no keys beyond them
    key:         characters of a free-form key
    int_digits:  integers without a bound lie within ±(10**int_digits - 1)
    frac_digits: decimals of a number (``multipleOf`` 10**-frac_digits unless it has its own)
    depth:       expansions of a recursive ``$ref``, and nesting of a free-form JSON value
    """

    string: int = 64
    items: int = 8
    properties: int = 4
    key: int = 16
    int_digits: int = 9
    frac_digits: int = 3
    depth: int = 3


LIMITS_LADDER: tuple[Limits, ...] = (
    Limits(string=256, items=16, properties=8, key=32, int_digits=12, frac_digits=6, depth=4),
    Limits(string=128, items=8, properties=6, key=24, int_digits=9, frac_digits=4, depth=3),
    Limits(string=64, items=8, properties=4, key=16, int_digits=9, frac_digits=3, depth=3),
    Limits(string=32, items=4, properties=3, key=12, int_digits=6, frac_digits=3, depth=2),
    Limits(string=16, items=3, properties=2, key=8, int_digits=6, frac_digits=2, depth=2),
    Limits(string=8, items=2, properties=2, key=6, int_digits=4, frac_digits=2, depth=1),
    Limits(string=4, items=1, properties=1, key=4, int_digits=3, frac_digits=1, depth=1),
    Limits(string=1, items=1, properties=1, key=2, int_digits=2, frac_digits=1, depth=1),
    Limits(string=0, items=0, properties=0, key=1, int_digits=1, frac_digits=0, depth=1),
)
"""From generous to tight; a constraint takes the first whose longest value fits its budget."""


# ------------------------------------------------------------------------------------------ bounding
def bound_schema(schema: Mapping[str, Any] | bool, limits: Limits = Limits(), *,
                 avoid: str | None = None) -> dict[str, Any] | bool:
    """A schema whose every value is also valid against ``schema`` and whose serialisations are
    finite (see the module docstring): local ``$ref`` inlined (recursion cut at ``limits.depth``,
    where the reference becomes ``false``), annotations dropped, ``type`` lists split into
    ``anyOf``, and the caps of ``limits`` applied. ``avoid``: a word no string may contain (a tool
    call's arguments must not spell the tag that ends the call). Raises :class:`ConfigError` on a
    remote ``$ref``."""
    if isinstance(schema, bool):
        return schema if schema is False else _any_value(limits, limits.depth, avoid)
    if not isinstance(schema, Mapping):
        raise ConfigError(f"a JSON schema is an object or a boolean, got {type(schema).__name__}", field="schema")
    return _Bounder(schema, limits, avoid).bound(schema, {})


def _avoid_pattern(word: str) -> str:
    """A regex matching exactly the strings that do not contain ``word`` (whose first character
    occurs in it once), without lookarounds (the engine has none). From the word's automaton:
    after its first character, a partial match either restarts (the first character again),
    breaks off (any other character), or ends the string."""
    import re

    first, rest, e = word[0], word[1:], re.escape
    if first in rest:
        raise ValueError(f"{word!r}: its first character occurs again")
    again = "|".join(e(rest[:j]) + e(first) for j in range(len(rest)))
    off = "|".join(e(rest[:j]) + f"[^{e(rest[j])}{e(first)}]" for j in range(len(rest)))
    end = "|".join(e(rest[:j]) for j in range(len(rest)))
    return f"^(?:[^{e(first)}]|{e(first)}(?:{again})*(?:{off}))*(?:{e(first)}(?:{again})*(?:{end}))?$"


class _Bounder:
    def __init__(self, root: Mapping[str, Any], limits: Limits, avoid: str | None = None) -> None:
        self.root, self.lim = root, limits
        self.avoid = _avoid_pattern(avoid) if avoid else None

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise ConfigError(f"only local $ref are supported, got {ref!r}", field="schema")
        node: Any = self.root
        for part in ref.lstrip("#").strip("/").split("/") if ref not in ("#", "#/") else []:
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise ConfigError(f"$ref {ref!r} points nowhere", field="schema") from None
        return node

    def bound(self, s: Any, seen: dict[str, int]) -> Any:
        lim = self.lim
        if s is True or s == {}:
            return _any_value(lim, lim.depth, self.avoid)
        if s is False:
            return False
        s = {k: v for k, v in s.items() if k not in _ANNOTATIONS and k not in ("$defs", "definitions")}
        if "$ref" in s:
            ref = s.pop("$ref")
            if seen.get(ref, 0) >= lim.depth:
                return False  # recursion cut: this branch cannot be taken any deeper
            target = self.bound(self.resolve(ref), {**seen, ref: seen.get(ref, 0) + 1})
            return target if not s else self._all_of([target, self.bound(s, seen)])
        if "allOf" in s:
            parts = [self.bound(p, seen) for p in s.pop("allOf")]
            if s:
                parts.append(self.bound(s, seen))
            return self._all_of(parts)
        for key in ("anyOf", "oneOf"):
            if key in s:
                branches = [self.bound(b, seen) for b in s.pop(key)]
                branches = [b for b in branches if b is not False]
                if not branches:
                    return False
                # oneOf stays oneOf: the engine takes it only where it equals anyOf (disjoint branches)
                rest = self.bound(s, seen) if s else None
                if rest is not None:
                    return self._all_of([{key: branches}, rest]) if rest is not False else False
                return {key: branches}
        if "const" in s or "enum" in s:
            return {k: s[k] for k in ("const", "enum") if k in s}
        types = s.get("type")
        if isinstance(types, list):
            rest = {k: v for k, v in s.items() if k != "type"}
            return {"anyOf": [self.bound({**rest, "type": t}, seen) for t in types]}
        if types is None:
            if "properties" in s or "additionalProperties" in s or "required" in s:
                types = "object"
            elif "items" in s or "prefixItems" in s:
                types = "array"
            elif any(k in s for k in ("minLength", "maxLength", "pattern", "format")):
                types = "string"
            elif any(k in s for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")):
                types = "number"
            else:
                return _any_value(lim, lim.depth, self.avoid)
        if types == "string":
            return self._string(s)
        if types in ("integer", "number"):
            return self._number(s, types)
        if types == "boolean" or types == "null":
            return {"type": types}
        if types == "array":
            return self._array(s, seen)
        if types == "object":
            return self._object(s, seen)
        raise ConfigError(f"unknown JSON schema type {types!r}", field="schema")

    def _string(self, s: dict) -> dict:
        out: dict[str, Any] = {"type": "string"}
        lo = int(s.get("minLength", 0))
        fmt = s.get("format")
        cap = max(lo, self.lim.string)
        if fmt is not None:
            out["format"] = fmt
            # a format of no length of its own (email, uri, ...) keeps room for a short valid value
            cap = max(lo, _FORMAT_LEN.get(fmt, max(self.lim.string, 16)))
        hi = s.get("maxLength")
        out["maxLength"] = int(min(hi, cap)) if hi is not None else cap
        if lo:
            out["minLength"] = lo
        if "pattern" in s:
            out["pattern"] = s["pattern"]
        if self.avoid:
            if "pattern" not in out:
                out["pattern"] = self.avoid
            else:  # both patterns: the engine intersects them
                return {"allOf": [out, {"type": "string", "pattern": self.avoid, "maxLength": out["maxLength"]}]}
        return out

    def _number(self, s: dict, kind: str) -> dict:
        out: dict[str, Any] = {"type": kind}
        span = 10 ** self.lim.int_digits - 1
        lo = s.get("minimum", s.get("exclusiveMinimum"))
        hi = s.get("maximum", s.get("exclusiveMaximum"))
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in s:
                out[key] = s[key]
        if lo is None and hi is None:
            out["minimum"], out["maximum"] = -span, span
        elif lo is None and hi is not None:
            out["minimum"] = min(math.floor(hi), 0) - span
        elif hi is None and lo is not None:
            out["maximum"] = max(math.ceil(lo), 0) + span
        if "multipleOf" in s:
            out["multipleOf"] = s["multipleOf"]
        elif kind == "number":
            # the decimals are what a number could otherwise repeat forever: 1.0000000...
            out["multipleOf"] = 1 if self.lim.frac_digits == 0 else float(f"1e-{self.lim.frac_digits}")
        return out

    def _array(self, s: dict, seen: dict) -> dict:
        lim = self.lim
        out: dict[str, Any] = {"type": "array"}
        prefix = [self.bound(p, seen) for p in s.get("prefixItems", [])]
        items = s.get("items", True)
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = [self.bound(p, seen) for p in items], s.get("additionalItems", True)
        if prefix:
            out["prefixItems"] = prefix
        out["items"] = self.bound(items, seen) if items is not False else False
        lo = int(s.get("minItems", 0))
        cap = max(lo, lim.items)
        if s.get("uniqueItems"):
            # the engine does not enforce uniqueness; one item (or none) is unique by construction
            cap = max(lo, min(cap, 1))
            if lo > 1:
                raise ConfigError("uniqueItems with minItems > 1 is not supported", field="schema")
        hi = s.get("maxItems")
        out["maxItems"] = int(min(hi, cap)) if hi is not None else cap
        if out["items"] is False:
            out["maxItems"] = min(out["maxItems"], len(prefix))
        if lo:
            out["minItems"] = lo
        return out

    def _object(self, s: dict, seen: dict) -> dict:
        lim = self.lim
        props = {k: self.bound(v, seen) for k, v in (s.get("properties") or {}).items()}
        required = list(s.get("required", []))
        extra = s.get("additionalProperties", True)
        for k in required:
            if k not in props:  # required but undeclared: its schema is additionalProperties'
                props[k] = self.bound(extra if isinstance(extra, Mapping) else True, seen)
        out: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            out["required"] = list(dict.fromkeys(required))
        if "properties" in s or extra is False:
            # declared keys only: unbounded extra keys are what a generated object can do without
            out["additionalProperties"] = False
            return out
        # a free-form map (dict[str, X]): a bounded number of short identifier-like keys
        value = self.bound(extra, seen) if extra is not False else False
        lo = int(s.get("minProperties", 0))
        hi = min(int(s.get("maxProperties", lim.properties)), max(lo, lim.properties))
        out["patternProperties"] = {_key_pattern(lim.key): value}
        out["additionalProperties"] = False
        out["maxProperties"] = hi
        if lo:
            out["minProperties"] = lo
        return out

    def _all_of(self, parts: list) -> Any:
        parts = [p for p in parts if p != {}]
        if any(p is False for p in parts):
            return False
        if len(parts) == 1:
            return parts[0]
        objects = [p for p in parts if p.get("type") == "object" and "patternProperties" not in p]
        if len(objects) == len(parts):
            props: dict[str, Any] = {}
            required: list[str] = []
            for p in objects:
                for k, v in p["properties"].items():
                    props[k] = v if k not in props else {"allOf": [props[k], v]}
                required += p.get("required", [])
            out = {"type": "object", "properties": props, "additionalProperties": False}
            if required:
                out["required"] = list(dict.fromkeys(required))
            return out
        return {"allOf": parts}


def _key_pattern(n: int) -> str:
    return f"^[A-Za-z_][A-Za-z0-9_]{{0,{max(0, n - 1)}}}$"


def _any_value(lim: Limits, depth: int, avoid: str | None = None) -> dict:
    """Any JSON value, bounded: scalars, and below ``depth`` arrays and maps of such values."""
    span = 10 ** lim.int_digits - 1
    text: dict[str, Any] = {"type": "string", "maxLength": lim.string}
    if avoid:
        text["pattern"] = avoid
    branches: list[dict] = [
        {"type": "null"}, {"type": "boolean"},
        {"type": "number", "minimum": -span, "maximum": span,
         "multipleOf": 1 if lim.frac_digits == 0 else float(f"1e-{lim.frac_digits}")},
        text,
    ]
    if depth > 1:
        inner = _any_value(lim, depth - 1, avoid)
        branches.append({"type": "array", "items": inner, "maxItems": lim.items})
        branches.append({"type": "object", "properties": {}, "patternProperties": {_key_pattern(lim.key): inner},
                         "additionalProperties": False, "maxProperties": lim.properties})
    return {"anyOf": branches}


def max_json_bytes(schema: Any, separators: tuple[str, str] = DEFAULT_SEPARATORS) -> int:
    """An upper bound on the UTF-8 length of any value of a *bounded* schema (one returned by
    :func:`bound_schema`) as the engine writes it with ``separators``; raises :class:`ConfigError`
    on a schema with an unbounded part. -1 for ``false`` (no value at all)."""
    item_sep, key_sep = (len(x.encode()) for x in separators)

    def lit(v: Any) -> int:
        return len(json.dumps(v, ensure_ascii=False, separators=separators).encode())

    def size(s: Any) -> int:
        if s is False:
            return -1
        if not isinstance(s, Mapping):
            raise ConfigError(f"not a bounded schema: {s!r}", field="schema")
        if "const" in s:
            return lit(s["const"])
        if "enum" in s:
            return max((lit(v) for v in s["enum"]), default=-1)
        if "anyOf" in s or "oneOf" in s:
            return max((size(b) for b in s.get("anyOf", s.get("oneOf"))), default=-1)
        if "allOf" in s:
            sizes = [size(b) for b in s["allOf"]]
            return -1 if any(x < 0 for x in sizes) else min(sizes)
        t = s.get("type")
        if t == "null":
            return 4
        if t == "boolean":
            return 5
        if t == "string":
            if "maxLength" not in s:
                raise ConfigError("unbounded string in a schema that should be bounded", field="schema")
            return 2 + _BYTES_PER_CHAR * int(s["maxLength"])
        if t in ("integer", "number"):
            bounds = [s[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in s]
            if len(bounds) < 2 and not (
                {"minimum", "exclusiveMinimum"} & s.keys() and {"maximum", "exclusiveMaximum"} & s.keys()
            ):
                raise ConfigError("unbounded number in a schema that should be bounded", field="schema")
            # a value between the bounds has no more integer digits than the larger bound
            digits = max(len(str(abs(math.trunc(float(b))))) for b in bounds)
            sign = 1 if min(float(b) for b in bounds) < 0 else 0
            if t == "integer":
                return sign + digits
            m = s.get("multipleOf")
            decimals = _decimals(m) if m is not None else None
            if decimals is None:
                raise ConfigError("a number without a finite multipleOf has unbounded decimals", field="schema")
            return sign + digits + (1 + decimals if decimals else 0)
        if t == "array":
            prefix = [size(p) for p in s.get("prefixItems", [])]
            n = int(s["maxItems"])
            item = size(s.get("items", False)) if n > len(prefix) else -1
            lens = [p for p in prefix[:n]] + [item] * max(0, n - len(prefix))
            lens = [x for x in lens if x >= 0]
            return 2 + sum(lens) + item_sep * max(0, len(lens) - 1)
        if t == "object":
            parts = [lit(k) + key_sep + size(v) for k, v in s.get("properties", {}).items() if size(v) >= 0]
            for pattern, v in (s.get("patternProperties") or {}).items():
                key = 2 + _BYTES_PER_CHAR * _pattern_len(pattern)
                parts += [key + key_sep + size(v)] * int(s.get("maxProperties", 0))
            if s.get("additionalProperties", True) is not False:
                raise ConfigError(
                    "an object with unbounded extra keys in a schema that should be bounded", field="schema"
                )
            return 2 + sum(parts) + item_sep * max(0, len(parts) - 1)
        raise ConfigError(f"cannot bound the size of schema {s!r}", field="schema")

    return size(schema)


def _decimals(m: float) -> int | None:
    """Decimals of the multiples of ``m`` (0.05 -> 2, 2 -> 0); None when not finite."""
    text = repr(float(m))
    if "e" in text or "E" in text:
        mant, exp = text.lower().split("e")
        frac = len(mant.split(".")[1].rstrip("0")) if "." in mant else 0
        return max(0, frac - int(exp))
    frac_text = text.partition(".")[2]
    return len(frac_text.rstrip("0"))


def _pattern_len(pattern: str) -> int:
    """Longest match of a key pattern made by :func:`_key_pattern` (``...{0,n}$``)."""
    try:
        return 1 + int(pattern.rsplit("{", 1)[1].split("}")[0].split(",")[-1])
    except (IndexError, ValueError):
        raise ConfigError(f"key pattern {pattern!r} has no length bound", field="schema") from None


# ------------------------------------------------------------------------------------------ tokenizers
_LLG_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LLG_LOCK = threading.Lock()


@dataclass
class _Vocab:
    """What the constraint needs of a tokenizer: the engine's view of it and a few ids."""

    llg: Any  # llguidance.LLTokenizer
    size: int  # ids the engine knows: 0 .. size-1
    end_ids: tuple[int, ...]
    token_bytes: list[bytes]  # bytes of every id (specials: their text)
    special: frozenset[int]
    single: dict[str, int] = field(default_factory=dict)  # tag text -> its single token id
    with_lt: np.ndarray | None = None  # ids whose bytes contain "<" (a tool-call tag could start there)


def _llguidance():
    try:
        import llguidance
    except ImportError as exc:  # a core dependency; only a broken install lands here
        raise ImportError("constrained decoding needs llguidance: pip install 'llguidance>=1.2'") from exc
    return llguidance


def supports_tokenizer(tokenizer: Any) -> bool:
    """Whether constraints can be built for ``tokenizer`` (the byte tokenizer, or a transformers
    tokenizer behind ``HFChatTokenizer``); the engine's view of it is built (and cached) here."""
    try:
        _vocab(tokenizer)
    except ConfigError:
        return False
    return True


def _vocab(tokenizer: Any) -> _Vocab:
    """The engine's tokenizer for ``tokenizer`` (ByteTokenizer or HFChatTokenizer), built once per
    tokenizer object (a transformers vocabulary takes ~0.1-1 s)."""
    with _LLG_LOCK:
        v = _LLG_CACHE.get(tokenizer)
        if v is None:
            v = _build_vocab(tokenizer)
            _LLG_CACHE[tokenizer] = v
        return v


class _ByteTokens:
    """The byte tokenizer as llguidance's ``TokenizerWrapper`` reads it: 256 one-byte tokens, then
    the specials (marked special, so no text can spell them)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokens = [bytes([i]) for i in range(256)] + [t.encode() for t in tokenizer.specials]
        self.special_token_ids = list(range(256, 256 + len(tokenizer.specials)))
        self.eos_token_id = tokenizer.end_id
        self.bos_token_id = None

    def __call__(self, text: str | bytes) -> list[int]:
        return list(text.encode() if isinstance(text, str) else text)


def _build_vocab(tokenizer: Any) -> _Vocab:
    llg = _llguidance()
    ends = _end_ids(tokenizer)
    if not ends:
        raise ConfigError("the tokenizer has no end-of-turn or eos id", field="tokenizer")
    hf = getattr(tokenizer, "tok", None)
    if hasattr(tokenizer, "specials") and hasattr(tokenizer, "special_ids"):  # sleepagent's ByteTokenizer
        wrapper = _ByteTokens(tokenizer)
        lt = llg.LLTokenizer(llg.TokenizerWrapper(wrapper), eos_token=list(ends))
        token_bytes = wrapper.tokens
        special = frozenset(wrapper.special_token_ids)
    elif hf is not None:
        from llguidance.hf import from_tokenizer

        lt = from_tokenizer(hf, eos_token=list(ends))
        n = lt.vocab_size
        special = frozenset(i for i in range(n) if lt.is_special_token(i))
        token_bytes = []
        for i in range(n):
            b = lt.decode_bytes([i])
            token_bytes.append(b[1:] if i in special and b[:1] == b"\xff" else b)
    else:
        raise ConfigError(f"no grammar vocabulary for a {type(tokenizer).__name__}; expected the byte "
                          "tokenizer or a transformers tokenizer (HFChatTokenizer)", field="tokenizer")
    single: dict[str, int] = {}
    for tag in ("<tool_call>", "</tool_call>"):
        try:
            ids = tokenizer.encode(tag)
        except Exception:  # a tokenizer that cannot say: the tag is text
            ids = []
        if len(ids) == 1:
            single[tag] = int(ids[0])
    with_lt = np.array([i for i, b in enumerate(token_bytes) if b"<" in b and i not in special], dtype=np.int64)
    return _Vocab(llg=lt, size=lt.vocab_size, end_ids=ends, token_bytes=token_bytes, special=special,
                  single=single, with_lt=with_lt)


# ------------------------------------------------------------------------------------------ constraint
_MATCHERS: OrderedDict[tuple[int, str], tuple[_Vocab, Any]] = OrderedDict()
_MATCHERS_MAX = 64


def _matcher(vocab: _Vocab, grammar: str) -> Any:
    """A fresh matcher for ``grammar``: a copy of a compiled one when the same grammar was built
    before for this vocabulary (an agent's turns repeat their schema and tools; a copy takes ~1 us,
    a build ~1-30 ms)."""
    llg = _llguidance()
    key = (id(vocab), grammar)
    with _LLG_LOCK:
        hit = _MATCHERS.get(key)
        if hit is not None and hit[0] is vocab:
            _MATCHERS.move_to_end(key)
            return hit[1].deep_copy()
    m = llg.LLMatcher(vocab.llg, grammar, log_level=0)
    if m.is_error():
        raise ConfigError(f"the grammar engine rejects the schema: {m.get_error()}", field="schema")
    with _LLG_LOCK:
        _MATCHERS[key] = (vocab, m.deep_copy())
        while len(_MATCHERS) > _MATCHERS_MAX:
            _MATCHERS.popitem(last=False)
    return m


@dataclass(frozen=True, kw_only=True)
class _CallGate:
    """A tool call may only start while the rest of the budget holds the longest call."""

    need: int  # tokens of the longest call, both tags included
    open_id: int | None  # the open tag's single token, or None: the tag is text
    close_id: int | None
    open_text: bytes
    close_text: bytes


class GrammarConstraint:
    """A logits mask from a grammar, advanced token by token (see the module docstring for the
    contract). Build it with :func:`json_constraint` or :func:`tool_call_constraint`.

    end_ids:      the tokens that end the turn; allowed exactly when :meth:`is_complete`
    max_tokens:   the loop's iterations, the end token's included
    needed:       the most tokens the constrained value (JSON) or one call (tools) can take
    limits:       the caps the schemas were bounded with
    schemas:      the bounded schema (JSON) or the bounded parameters of each tool, by name
    grammar:      the llguidance grammar (Lark text or JSON)
    """

    def __init__(self, vocab: _Vocab, grammar: str, *, max_tokens: int, needed: int, limits: Limits,
                 schemas: Any, kind: Literal["json", "tools"], gate: _CallGate | None = None) -> None:
        self._vocab = vocab
        self.grammar = grammar
        self.kind = kind
        self.max_tokens = int(max_tokens)
        self.needed = needed
        self.limits = limits
        self.schemas = schemas
        self.end_ids = vocab.end_ids
        self._gate = gate
        self.output_schema: Any = schemas if kind == "json" else None  # the bounded answer's schema, if any
        self._matcher = _matcher(vocab, grammar)
        self._words = np.zeros((vocab.size + 31) // 32, dtype=np.uint32)
        self._ends = np.array(self.end_ids, dtype=np.int64)
        self.reset()

    # --- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the start of the turn."""
        self._matcher.reset()
        self._emitted: list[int] = []
        self._mask: np.ndarray | None = None
        self._text = bytearray()  # what was written since the last call closed (text tags only)
        self._inside = False  # between a call's open tag and its close tag

    def advance(self, token: int) -> None:
        """Feed one emitted token (not an end token). Raises :class:`ModelBehaviorError` when the
        grammar does not allow it."""
        token = int(token)
        mask = self._mask if self._mask is not None else self._compute()
        if not (0 <= token < mask.size) or not mask[token] or token in self.end_ids:
            raise ModelBehaviorError(f"token {token} is not allowed by the grammar here", body=self.text())
        if not self._matcher.consume_token(token):
            raise ModelBehaviorError(f"the grammar engine refused token {token}: {self._matcher.get_error()}",
                                     body=self.text())
        self._emitted.append(token)
        self._mask = None
        if self._gate is not None:
            self._track(token)

    def _track(self, token: int) -> None:
        """Whether a call is open (between its open tag and its close tag), from the tokens fed."""
        gate = self._gate
        assert gate is not None
        if token in (gate.open_id, gate.close_id):
            self._inside = token == gate.open_id
            self._text.clear()
            return
        self._text += self._vocab.token_bytes[token]
        while True:  # one token may close a call and open the next
            if (gate.close_id if self._inside else gate.open_id) is not None:
                self._text.clear()  # the next tag is a token of its own: no text to watch
                return
            tag = gate.close_text if self._inside else gate.open_text
            k = self._text.find(tag)
            if k < 0:
                del self._text[: max(0, len(self._text) - len(tag) + 1)]  # keep what may begin the tag
                return
            self._inside = not self._inside
            del self._text[: k + len(tag)]

    def _sync(self, emitted: Sequence[int]) -> None:
        n = len(self._emitted)
        if len(emitted) < n or (n and int(emitted[n - 1]) != self._emitted[-1]):
            self.reset()  # a new turn (or a rewritten one): replay it from the start
            n = 0
        for t in emitted[n:]:
            self.advance(t)

    # --- masks ---------------------------------------------------------------------------------
    def _compute(self) -> np.ndarray:
        """Allowed ids after what was fed, as a bool [vocab] array (the engine's vocabulary)."""
        self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        mask = np.unpackbits(self._words.view(np.uint8), bitorder="little", count=self._vocab.size).astype(bool)
        ends = self._ends
        remaining = self.max_tokens - len(self._emitted)
        accepting = self._matcher.is_accepting()
        mask[ends] = accepting
        if accepting and remaining <= 1:  # the last iteration: only the end
            mask[:] = False
            mask[ends] = True
        gate = self._gate
        if gate is not None and not self._inside and remaining < gate.need + 1:
            # no call may start that the budget could not finish (its end token included)
            if gate.open_id is not None:
                mask[gate.open_id] = False
            elif self._vocab.with_lt is not None:
                mask[self._vocab.with_lt] = False
        if not mask.any():
            # not reachable for a bounded grammar; say so instead of sampling from all -inf
            raise ModelBehaviorError("the grammar allows no token here (budget spent before the value ended)",
                                     body=self.text())
        self._mask = mask
        return mask

    def allowed(self, emitted: Sequence[int] | None = None) -> torch.Tensor:
        """The allowed ids as a bool [vocab] tensor (the engine's vocabulary; read-only), after
        ``emitted`` (None: after what was fed)."""
        if emitted is not None:
            self._sync(emitted)
        return torch.from_numpy(self._mask if self._mask is not None else self._compute())

    def apply(self, logits: torch.Tensor, emitted: Sequence[int]) -> torch.Tensor:
        """``logits`` [vocab] (or [1, vocab]) with every disallowed id at -inf (a new tensor); ids
        beyond the tokenizer's vocabulary (a padded embedding) are disallowed."""
        self._sync(emitted)
        mask = self._mask if self._mask is not None else self._compute()
        V = logits.shape[-1]
        if V < mask.size:
            raise ConfigError(f"logits have {V} entries but the tokenizer has {mask.size} ids", field="logits")
        banned = np.ones(V, dtype=bool)
        np.logical_not(mask, out=banned[: mask.size])
        return logits.masked_fill(torch.from_numpy(banned).to(logits.device, non_blocking=True), float("-inf"))

    def forced(self, emitted: Sequence[int], limit: int) -> list[int]:
        """The tokens that must follow ``emitted``, at most ``limit``: while the mask allows one
        token alone (and not an end token), that token, fed as it is found. A picker would choose
        each of them whatever the logits, so the turn may read them in one piece (jump-forward
        decoding: a tool call's ``{"name": "`` and a lone tool's name cost one read, not a decode
        step a byte)."""
        self._sync(emitted)
        out: list[int] = []
        while len(out) < limit:
            mask = self._mask if self._mask is not None else self._compute()
            if np.count_nonzero(mask) != 1:
                break
            token = int(mask.argmax())
            if token in self.end_ids:
                break
            self.advance(token)
            out.append(token)
        return out

    # --- queries -------------------------------------------------------------------------------
    def is_complete(self) -> bool:
        """What was fed is a complete turn: an end token may follow."""
        return bool(self._matcher.is_accepting())

    def is_finished(self) -> bool:
        """Nothing but an end token may follow."""
        return bool(self._matcher.is_stopped()) or (self.is_complete() and self.max_tokens - len(self._emitted) <= 1)

    @property
    def tokens(self) -> list[int]:
        """The tokens fed so far."""
        return list(self._emitted)

    def text(self) -> str:
        return b"".join(self._vocab.token_bytes[t] for t in self._emitted).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return (f"GrammarConstraint(kind={self.kind!r}, max_tokens={self.max_tokens}, needed={self.needed}, "
                f"fed={len(self._emitted)})")


# ------------------------------------------------------------------------------------------ builders
def _json_options(separators: tuple[str, str]) -> dict[str, Any]:
    import re

    return {"whitespace_flexible": False, "item_separator": re.escape(separators[0]),
            "key_separator": re.escape(separators[1]), "json_allowed_escapes": _ESCAPES}


def _fit(max_tokens: int, limits: Limits | None,
         size_of: Callable[[Limits], tuple[Any, int]]) -> tuple[Limits, Any, int]:
    """The first limits (``limits`` alone if given, else the ladder) whose bounded size fits."""
    ladder = (limits,) if limits is not None else LIMITS_LADDER
    smallest = None
    for lim in ladder:
        bounded, need = size_of(lim)
        if need + 1 <= max_tokens:  # + the end token
            return lim, bounded, need
        smallest = need
    raise ConfigError(f"max_tokens={max_tokens} cannot hold the value: even with the tightest caps it "
                      f"may take {smallest} tokens, plus the end token", field="max_tokens")


def json_constraint(tokenizer: Any, schema: Mapping[str, Any] | type, *, max_tokens: int,
                    limits: Limits | None = None, separators: tuple[str, str] = DEFAULT_SEPARATORS,
                    avoid: str | None = None) -> GrammarConstraint:
    """The turn is one JSON value valid against ``schema`` (a JSON schema, or a pydantic model
    class), written with ``separators`` and no other whitespace, ended within ``max_tokens``
    iterations of the decoding loop (end token included). ``limits``: fixed caps instead of the
    largest of :data:`LIMITS_LADDER` that fits. ``avoid``: a word no string of the value may
    contain (see :func:`bound_schema`). Raises :class:`ConfigError` when the schema cannot be
    bounded, the engine rejects it, or no caps fit ``max_tokens``."""
    schema = _schema_of(schema)
    vocab = _vocab(tokenizer)
    llg = _llguidance()

    def size_of(lim: Limits) -> tuple[Any, int]:
        bounded = bound_schema(schema, lim, avoid=avoid)
        if bounded is False:
            raise ConfigError("the schema accepts no value (a recursion that never ends?)", field="schema")
        return bounded, max_json_bytes(bounded, separators)

    lim, bounded, need = _fit(max_tokens, limits, size_of)
    grammar = llg.LLMatcher.grammar_from_json_schema(bounded, overrides=_json_options(separators))
    return GrammarConstraint(vocab, grammar, max_tokens=max_tokens, needed=need, limits=lim, schemas=bounded,
                             kind="json")


def _schema_of(schema: Mapping[str, Any] | type) -> Mapping[str, Any]:
    """A JSON schema, from itself or a pydantic model class."""
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return cast("Mapping[str, Any]", schema.model_json_schema())
    return cast("Mapping[str, Any]", schema)


def tool_schemas(tools: Any) -> dict[str, Any]:
    """name -> parameters schema, from a mapping, Tool objects or OpenAI function specs."""
    if isinstance(tools, Mapping):
        return {str(k): v for k, v in tools.items()}
    out: dict[str, Any] = {}
    for t in tools:
        if isinstance(t, Mapping):
            fn = t.get("function", t)
            out[fn["name"]] = fn.get("parameters") or {"type": "object", "properties": {}}
        else:
            out[t.name] = t.json_schema
    return out


def _lark_str(text: str) -> str:
    return json.dumps(text)


def tool_call_constraint(tokenizer: Any, tools: Mapping[str, Any] | Iterable[Any], tool_choice: str = "auto", *,
                         max_tokens: int, parallel: bool = True, limits: Limits | None = None,
                         separators: tuple[str, str] = DEFAULT_SEPARATORS,
                         output: Mapping[str, Any] | type | None = None) -> GrammarConstraint:
    """The turn under ``tool_choice`` (normalised: "auto" | "none" | "required" | a tool's name;
    see :func:`~sleepagent.runtime.constraints.normalize_tool_choice`):

    - "auto": free text that never spells ``<tool_call>``, then (if the budget holds one) calls;
    - "none": free text only;
    - "required": one or more calls and nothing else (one if not ``parallel``);
    - a tool's name: exactly one call of that tool.

    ``output`` (a JSON schema or a pydantic model class): the turn's answer is structured, so the
    free text above becomes one JSON value valid against it, and nothing else: under "auto" the
    turn is that value *or* calls (an agent's final answer, or its tool calls); under "none" (or
    with no tools) it is the value. The value always fits the budget (a :class:`ConfigError`
    otherwise); no string in it can spell ``tool_call>``.

    A call is ``<tool_call>{"name": "<tool>", "arguments": <bounded JSON valid against that tool's
    parameters>}</tool_call>``, optionally with a newline inside each tag (as Qwen-style templates
    write it); calls are separated by at most one newline. ``tools``: name -> parameters schema,
    :class:`~sleepagent.tools.Tool` objects or OpenAI function specs. Free text has no completion
    requirement (the loop's budget cuts it, as without a constraint); a started call always
    finishes within ``max_tokens``.
    """
    schemas = tool_schemas(tools)
    if tool_choice not in ("auto", "none", "required") and tool_choice not in schemas:
        raise ConfigError(f"tool_choice {tool_choice!r} is not one of the tools ({', '.join(schemas) or 'none'})",
                          field="tool_choice")
    if tool_choice in ("required",) and not schemas:
        raise ConfigError("tool_choice 'required' with no tools", field="tool_choice")
    vocab = _vocab(tokenizer)
    llg = _llguidance()
    chosen = list(schemas) if tool_choice in ("auto", "required", "none") else [tool_choice]
    open_tag, close_tag = "<tool_call>", "</tool_call>"
    open_id, close_id = vocab.single.get(open_tag), vocab.single.get(close_tag)
    tag_cost = (
        (1 if open_id is not None else len(open_tag)) + (1 if close_id is not None else len(close_tag)) + 3
    )  # + 3 optional newlines

    def head(name: str) -> str:
        return '{"name"' + separators[1] + json.dumps(name) + separators[0] + '"arguments"' + separators[1]

    def size_of(lim: Limits) -> tuple[dict[str, Any], int]:
        bounded: dict[str, Any] = {}
        worst = 0
        for name in chosen:
            # no argument string may spell "tool_call>": the call would seem to end (or a new one to
            # open) inside it, for the runtime's parser reads the tags from the decoded text
            b = bound_schema(schemas[name], lim, avoid="tool_call>")
            if b is False:
                raise ConfigError(f"tool {name!r}: its parameters accept no value", field="tools")
            bounded[name] = b
            worst = max(worst, len(head(name).encode()) + max_json_bytes(b, separators) + 1 + tag_cost)
        return bounded, worst

    out_schema = _schema_of(output) if output is not None else None

    def out_size(lim: Limits) -> tuple[Any, int]:
        b = bound_schema(cast("Mapping[str, Any]", out_schema), lim, avoid="tool_call>")
        if b is False:
            raise ConfigError("the output schema accepts no value (a recursion that never ends?)", field="output")
        return b, max_json_bytes(b, separators)

    def both_size(lim: Limits) -> tuple[tuple[dict[str, Any], Any, int], int]:
        (tools_b, call_need), (out_b, out_need) = size_of(lim), out_size(lim)
        return (tools_b, out_b, call_need), max(call_need, out_need)

    out_bounded: Any = None
    bounded: dict[str, Any]
    if tool_choice == "none" or not chosen:
        lim, bounded, need = (limits or LIMITS_LADDER[-1]), {}, 0
        if out_schema is not None:
            lim, out_bounded, need = _fit(max_tokens, limits, out_size)
    elif out_schema is None or tool_choice != "auto":
        try:
            lim, bounded, need = _fit(max_tokens, limits, size_of)
        except ConfigError:
            if tool_choice != "auto":
                raise
            lim, bounded, need = LIMITS_LADDER[-1], *size_of(LIMITS_LADDER[-1])
            logger.warning("max_tokens=%d cannot hold a call (up to %d tokens): this turn can only be text",
                           max_tokens, need)
    else:  # "auto" with a structured answer: the caps must fit the value and a call
        try:
            lim, (bounded, out_bounded, need), _ = _fit(max_tokens, limits, both_size)
        except ConfigError:
            lim, out_bounded, _ = _fit(max_tokens, limits, out_size)  # the value alone, or the error
            bounded, need = {}, 0
            logger.warning("max_tokens=%d cannot hold a call beside the answer: this turn can only be the answer",
                           max_tokens)
    opts = json.dumps(_json_options(separators))
    rules = []
    for i, name in enumerate(bounded):
        body = {**bounded[name], "x-guidance": json.loads(opts)} if isinstance(bounded[name], dict) else bounded[name]
        rules.append(f"args_{i}: %json {json.dumps(body)}")
        rules.append(f'call_{i}: {_lark_str(head(name))} args_{i} "}}"')
    body_rule = "body: " + " | ".join(f"call_{i}" for i in range(len(bounded))) if bounded else ""
    open_sym = f"<[{open_id}]>" if open_id is not None else _lark_str(open_tag)
    close_sym = f"<[{close_id}]>" if close_id is not None else _lark_str(close_tag)
    text = 'TEXT: /(?s:.+)/ & ~/(?s:.*)<tool_call>(?s:.*)/'
    # a newline may follow each tag (Qwen-style templates write them); one trailing newline belongs
    # to the call, so that a gap before the next call is never owed once the budget is short
    call = f'call: {open_sym} "\\n"? body "\\n"? {close_sym} "\\n"?'
    more = "call*" if parallel else ""
    if out_bounded is not None:
        body = {**out_bounded, "x-guidance": json.loads(opts)} if isinstance(out_bounded, dict) else out_bounded
        rules.append(f"answer: %json {json.dumps(body)}")
    if out_bounded is not None and (tool_choice in ("auto", "none") or not bounded):
        start = f"start: answer | call {more}" if bounded and tool_choice == "auto" else "start: answer"
    elif tool_choice == "none" or not bounded:
        start = "start: TEXT?"
    elif tool_choice == "auto":
        if open_id is not None:
            start = f"start: TEXT? | TEXT? call {more}"
        else:  # a text tag: the lexer needs the free text to end lazily at the tag
            rules.append(f'hd[lazy]: /(?s:.*){open_tag}/')
            start = f'start: TEXT? | hd "\\n"? body "\\n"? {close_sym} "\\n"? {more}'
    elif tool_choice == "required":
        start = f"start: call {more}"
    else:
        start = "start: call"
    grammar_text = "\n".join(["%llguidance {}", start, call, body_rule, *rules, text])
    grammar = llg.LLMatcher.grammar_from_lark(grammar_text)
    gate = None
    if bounded:
        gate = _CallGate(
            need=need, open_id=open_id, close_id=close_id, open_text=open_tag.encode(), close_text=close_tag.encode()
        )
    if out_bounded is not None:
        need = max(need, max_json_bytes(out_bounded, separators))
    c = GrammarConstraint(vocab, grammar, max_tokens=max_tokens, needed=need, limits=lim, schemas=bounded,
                          kind="tools", gate=gate)
    c.grammar = grammar_text
    c.output_schema = out_bounded
    return c


# ------------------------------------------------------------------------------------------ benchmark
def bench_constrained(model: Any = "docqa-small", *, schema: Mapping[str, Any] | None = None, tokens: int = 256,
                      max_tokens: int = 96, repeats: int = 3, threads: int | None = 1) -> dict[str, Any]:
    """Per-token cost of the mask on ``model`` (a SleepModel or a shipped checkpoint's name), in one
    process. Constrained: greedy values under :func:`json_constraint` (``schema``, default a small
    object; budget ``max_tokens``), one after another from the same prompt, until ``tokens`` tokens
    were written, constraint builds and end-token masks included. Plain: the same segments (same
    lengths, same state clones and positions) decoded greedily without a mask. ``repeats`` rounds,
    medians; ``threads``: torch threads during the run (None: leave as is).

    Returns ``plain_ms_per_token``, ``constrained_ms_per_token``, their ``ratio``, the mask's own
    cost per token (``mask_ms_per_token``: advance + compute + apply, median and p99) and the
    constraint's ``build_ms``."""
    from ..model import SleepModel

    sm = SleepModel.from_pretrained(model) if isinstance(model, str) else model
    tok, net = sm.tokenizer, sm.model
    schema = schema or {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}},
        "ok": {"type": "boolean"}}, "required": ["name", "age", "tags", "ok"]}
    prompt = tok.render_turn("user", "Reply with a JSON object.") + tok.generation_prompt()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            base = net.new_state(1)
            first = net.prefill(torch.tensor([prompt]), base)[0, -1]
            ends = torch.tensor(_end_ids(tok))

            mask_s: list[float] = []
            build_s: list[float] = []

            def constrained(lengths: list[int]) -> float:
                # values one after another from the prompt, until ``tokens`` tokens were written;
                # ``lengths`` receives each value's length, for plain() to replay
                done, t = 0, time.perf_counter()
                while done < tokens:
                    t0 = time.perf_counter()
                    c = json_constraint(tok, schema, max_tokens=max_tokens)
                    build_s.append(time.perf_counter() - t0)
                    state, logits = base.clone(), first.clone()
                    emitted: list[int] = []
                    for _ in range(max_tokens):
                        t0 = time.perf_counter()
                        masked = c.apply(logits, emitted)
                        mask_s.append(time.perf_counter() - t0)
                        nxt = int(torch.argmax(masked))
                        if nxt in c.end_ids or done >= tokens:
                            break
                        logits = net.step(torch.tensor([nxt]), state)[0]
                        emitted.append(nxt)
                        done += 1
                    lengths.append(len(emitted))
                return (time.perf_counter() - t) / tokens

            def plain(lengths: list[int]) -> float:
                # the same segments from the same state (positions, window, clones), unconstrained
                t = time.perf_counter()
                for n in lengths:
                    state, logits = base.clone(), first.clone()
                    for _ in range(n):
                        logits = logits.index_fill(0, ends, float("-inf"))  # time tokens, not turns
                        nxt = int(torch.argmax(logits))
                        logits = net.step(torch.tensor([nxt]), state)[0]
                return (time.perf_counter() - t) / sum(lengths)

            warm: list[int] = []
            plain([16])
            constrained(warm)
            mask_s.clear()
            build_s.clear()
            p, c = [], []
            for _ in range(repeats):
                lengths: list[int] = []
                c.append(constrained(lengths))
                p.append(plain(lengths))
    finally:
        torch.set_num_threads(old_threads)
    from importlib.metadata import version

    p_ms, c_ms = 1000 * statistics.median(p), 1000 * statistics.median(c)
    return {
        "model": sm.name, "engine": f"llguidance {version('llguidance')}",
        "schema": schema, "max_tokens": max_tokens, "tokens": tokens, "repeats": repeats,
        "threads": threads or torch.get_num_threads(),
        "plain_ms_per_token": round(p_ms, 3), "constrained_ms_per_token": round(c_ms, 3),
        "ratio": round(c_ms / p_ms, 3),
        "mask_ms_per_token": round(1000 * statistics.median(mask_s), 4),
        "mask_ms_per_token_mean": round(1000 * statistics.fmean(mask_s), 4),
        "mask_ms_per_token_p99": round(1000 * float(np.quantile(mask_s, 0.99)), 4),
        "build_ms": round(1000 * statistics.median(build_s), 3),
    }


def _end_ids(tokenizer: Any) -> tuple[int, ...]:
    """The tokens that end a turn: the end-of-turn token, then eos."""
    return tuple(dict.fromkeys(i for i in (getattr(tokenizer, "end_id", None), getattr(tokenizer, "eos_id", None))
                               if i is not None))
