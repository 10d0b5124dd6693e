"""Schema-constrained decoding (sleepagent.runtime.grammar): the shipped model, under the mask,
writes a value valid against each of 200 random JSON schemas, within its token budget."""

from __future__ import annotations

import json
import random
import string

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleepagent.errors import ConfigError, ModelBehaviorError
from sleepagent.runtime.grammar import (
    LIMITS_LADDER,
    Limits,
    bound_schema,
    json_constraint,
    max_json_bytes,
)
from sleepagent.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
BUDGET = 64  # tokens per value, end token included: short outputs keep 200 model runs fast

# ------------------------------------------------------------------------------------------ schemas
KEYS = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)


@st.composite
def string_schema(draw):
    s: dict = {"type": "string"}
    if draw(st.booleans()):
        s["maxLength"] = draw(st.integers(0, 12))
    if draw(st.booleans()):
        s["minLength"] = draw(st.integers(0, min(3, s.get("maxLength", 3))))
    return s


@st.composite
def number_schema(draw):
    s: dict = {"type": draw(st.sampled_from(["integer", "number"]))}
    lo = draw(st.one_of(st.none(), st.integers(-1000, 1000)))
    hi = draw(st.one_of(st.none(), st.integers(0, 2000)))
    if lo is not None and hi is not None and hi < lo:
        lo, hi = hi, lo
    if s["type"] == "number" and draw(st.booleans()):  # fractional bounds
        lo = None if lo is None else lo + 0.25
        hi = None if hi is None else hi + 0.5
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


ENUM_VALUES = st.one_of(st.text(string.ascii_letters + ' "\\é', max_size=6), st.integers(-50, 50),
                        st.booleans(), st.none())


def leaf():
    return st.one_of(
        string_schema(),
        number_schema(),
        st.just({"type": "boolean"}),
        st.lists(ENUM_VALUES, min_size=1, max_size=4, unique_by=lambda v: json.dumps(v)).map(lambda v: {"enum": v}),
    )


def object_of(values):
    @st.composite
    def build(draw):
        props = draw(st.dictionaries(KEYS, values, min_size=1, max_size=4))
        required = [k for k in props if draw(st.booleans())]
        s = {"type": "object", "properties": props}
        if required:
            s["required"] = required
        return s

    return build()


def array_of(values):
    @st.composite
    def build(draw):
        s = {"type": "array", "items": draw(values)}
        lo = draw(st.integers(0, 2))
        if lo:
            s["minItems"] = lo
        if draw(st.booleans()):
            s["maxItems"] = lo + draw(st.integers(0, 3))
        return s

    return build()


def schemas():
    """Objects nesting objects and arrays two levels deep; scalars and arrays at the top too."""
    inner = st.one_of(leaf(), object_of(leaf()), array_of(leaf()))
    nested = st.one_of(leaf(), object_of(inner), array_of(inner))
    return st.one_of(object_of(nested), object_of(nested), array_of(inner), leaf())


# ------------------------------------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def shipped():
    """The shipped docqa model, its prompt already read: (model, state after the prompt, logits)."""
    from sleepagent.model import SleepModel

    # one thread: on a loaded 2-core machine a second one mostly waits (the step takes ~5 ms)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sm = SleepModel.from_pretrained("docqa-small")
    prompt = sm.tokenizer.render_turn("user", "Reply with one JSON value.") + sm.tokenizer.generation_prompt()
    with torch.inference_mode():
        state = sm.model.new_state(1)
        logits = sm.model.prefill(torch.tensor([prompt]), state)[0, -1]
    yield sm, state, logits
    torch.set_num_threads(threads)


def generate(sm, state, logits, constraint, *, temperature: float = 0.0, seed: int = 0) -> tuple[list[int], str]:
    """Decode as the runtime's loop does: mask, pick, stop at an end token, else step the model."""
    state = state.clone()
    rng = torch.Generator().manual_seed(seed)
    emitted: list[int] = []
    with torch.inference_mode():
        for _ in range(constraint.max_tokens):
            masked = constraint.apply(logits, emitted)
            if temperature > 0:
                nxt = int(torch.multinomial(torch.softmax(masked / temperature, -1), 1, generator=rng))
            else:
                nxt = int(torch.argmax(masked))
            if nxt in constraint.end_ids:
                return emitted, "stop"
            logits = sm.model.step(torch.tensor([nxt]), state)[0]
            emitted.append(nxt)
    return emitted, "length"


@pytest.mark.slow
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(schema=schemas(), sampled=st.booleans())
def test_shipped_model_writes_valid_json_for_random_schemas(shipped, schema, sampled):
    sm, state, logits = shipped
    # BUDGET, or the least a schema with many required keys needs (a smaller budget is refused at
    # build time, never cut: test_unsatisfiable_budget_is_refused_at_build)
    budget = max(BUDGET, max_json_bytes(bound_schema(schema, LIMITS_LADDER[-1])) + 1)
    c = json_constraint(sm.tokenizer, schema, max_tokens=budget)
    ids, finish = generate(sm, state, logits, c, temperature=1.0 if sampled else 0.0, seed=len(json.dumps(schema)))
    text = sm.tokenizer.decode(ids)
    assert finish == "stop", f"no end within {budget} tokens: {text!r}"
    assert len(ids) <= c.needed
    jsonschema.validate(json.loads(text), schema)


# ------------------------------------------------------------------------------------------ bounding
def test_bounded_schema_is_a_subset_with_finite_size():
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "n": {"type": "number"},
            "i": {"type": "integer", "minimum": 3},
            "a": {"type": "array", "items": {"type": "string"}},
            "m": {"type": "object", "additionalProperties": {"type": "integer"}},
            "any": {},
        },
        "required": ["s"],
    }
    lim = Limits(string=5, items=2, properties=2, key=3, int_digits=2, frac_digits=1, depth=1)
    b = bound_schema(schema, lim)
    p = b["properties"]
    assert p["s"]["maxLength"] == 5 and p["a"]["maxItems"] == 2
    assert p["n"]["multipleOf"] == 0.1 and p["n"]["minimum"] == -99 and p["n"]["maximum"] == 99
    assert p["i"]["minimum"] == 3 and p["i"]["maximum"] == 3 + 99
    assert b["additionalProperties"] is False and p["m"]["maxProperties"] == 2
    assert max_json_bytes(b) > 0


def test_recursive_ref_is_cut_at_depth():
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer", "minimum": 0, "maximum": 9},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v", "kids"]}},
        "$ref": "#/$defs/node"}
    c = json_constraint(TOK, tree, max_tokens=400)
    assert c.limits.depth >= 1
    # a random walk over everything the mask allows always ends, and the value validates
    for seed in range(10):
        ids = random_walk(c, seed)
        jsonschema.validate(json.loads(TOK.decode(ids)), tree)


def test_unsatisfiable_budget_is_refused_at_build():
    schema = {"type": "object", "properties": {k: {"type": "string", "minLength": 10} for k in "abcdef"},
              "required": list("abcdef")}
    with pytest.raises(ConfigError, match="max_tokens"):
        json_constraint(TOK, schema, max_tokens=32)


def test_pydantic_model_as_schema():
    from pydantic import BaseModel, Field

    class Address(BaseModel):
        city: str = Field(max_length=10)

    class Person(BaseModel):
        name: str
        age: int = Field(ge=0, le=130)
        address: Address | None = None
        tags: list[str] = []

    c = json_constraint(TOK, Person, max_tokens=200)
    for seed in range(20):
        Person.model_validate_json(TOK.decode(random_walk(c, seed)))


# ------------------------------------------------------------------------------------------ contract
def random_walk(c, seed: int) -> list[int]:
    """Any token the mask allows, uniformly: the adversary the bound must hold against."""
    rng = random.Random(seed)
    emitted: list[int] = []
    for _ in range(c.max_tokens):
        allowed = torch.nonzero(c.allowed(emitted)).flatten().tolist()
        nxt = rng.choice(allowed)
        if nxt in c.end_ids:
            return emitted
        emitted.append(nxt)
    raise AssertionError(f"no end within {c.max_tokens} tokens: {TOK.decode(emitted)!r}")


@pytest.mark.parametrize("budget", [32, 48, 200])
def test_any_allowed_path_ends_within_budget(budget):
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "array", "items": {"type": "number"}},
            "c": {"type": "boolean"},
        },
        "required": ["a", "b"],
    }
    c = json_constraint(TOK, schema, max_tokens=budget)
    for seed in range(30):
        ids = random_walk(c, seed)
        assert len(ids) + 1 <= budget
        jsonschema.validate(json.loads(TOK.decode(ids)), schema)


def test_apply_masks_and_ends_only_when_complete():
    c = json_constraint(TOK, {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
                        max_tokens=20)
    logits = torch.zeros(300)  # a padded embedding: ids past the tokenizer are masked too
    out = c.apply(logits, [])
    assert out.shape == logits.shape and torch.isinf(out[268:]).all()
    assert torch.isfinite(out).nonzero().flatten().tolist() == [ord("{")]
    emitted = list(b'{"ok": true}')
    assert not c.is_complete()
    out = c.apply(torch.zeros(268), emitted)
    assert c.is_complete() and c.is_finished()
    assert sorted(torch.isfinite(out).nonzero().flatten().tolist()) == sorted(c.end_ids)


def test_sync_follows_emitted_and_restarts_on_a_new_turn():
    c = json_constraint(TOK, {"type": "string", "maxLength": 3}, max_tokens=20)
    c.apply(torch.zeros(268), list(b'"ab'))
    assert c.tokens == list(b'"ab')
    c.apply(torch.zeros(268), list(b'"x'))  # not an extension: replayed from the start
    assert c.tokens == list(b'"x')
    c.apply(torch.zeros(268), [])
    assert c.tokens == []


def test_token_outside_the_mask_is_an_error():
    c = json_constraint(TOK, {"type": "integer", "minimum": 0, "maximum": 9}, max_tokens=5)
    with pytest.raises(ModelBehaviorError):
        c.apply(torch.zeros(268), list(b"x"))


def test_sampler_takes_it_as_its_constraint():
    from sleepagent.runtime.generate import Sampler

    c = json_constraint(TOK, {"enum": ["yes", "no"]}, max_tokens=10)
    pick = Sampler(0.0, constraint=c)
    emitted: list[int] = []
    while (nxt := pick(torch.randn(268), emitted)) not in c.end_ids:
        emitted.append(nxt)
    assert json.loads(TOK.decode(emitted)) in ("yes", "no")
