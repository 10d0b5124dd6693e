"""The tool-call grammar (sleepagent.runtime.grammar.tool_call_constraint): names and arguments
constrained, the tool-choice modes, calls that always finish within the budget, on the byte
tokenizer (tags are special tokens) and on transformers tokenizers (tags as single tokens, or text)."""

from __future__ import annotations

import random

import jsonschema
import pytest
import torch
from sleepagent.tools.calls import MalformedToolCall, ToolCall, parse_tool_calls

from sleepagent.errors import ConfigError
from sleepagent.runtime.grammar import tool_call_constraint
from sleepagent.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
OPEN, CLOSE = TOK.token_id("<tool_call>"), TOK.token_id("</tool_call>")
TOOLS = {
    "calc": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 12}},
             "required": ["expression"]},
    "next_page": {"type": "object", "properties": {}},
    "search": {"type": "object", "properties": {"q": {"type": "string"},
                                                "k": {"type": "integer", "minimum": 1, "maximum": 10}},
               "required": ["q"]},
}


def walk(c, tok, seed: int, *, call_bias: float = 0.3, end_bias: float = 0.05) -> list[int]:
    """A random path through the mask that leans towards writing the open tag (so calls happen)
    and sometimes ends; free text (which no grammar ends) is ended before the budget runs out."""
    rng = random.Random(seed)
    tag = tok.encode("<tool_call>")
    emitted: list[int] = []
    for _ in range(c.max_tokens):
        allowed = c.allowed(emitted)
        options = torch.nonzero(allowed).flatten().tolist()
        ends = [t for t in options if t in c.end_ids]
        if ends and (rng.random() < end_bias or len(emitted) + 2 >= c.max_tokens):
            return emitted
        partial = next((k for k in range(len(tag) - 1, 0, -1) if emitted[-k:] == tag[:k]), 0)
        nxt = tag[partial] if allowed[tag[partial]] and (partial or rng.random() < call_bias) else rng.choice(options)
        if nxt in c.end_ids:
            return emitted
        emitted.append(nxt)
    raise AssertionError(f"no end within {c.max_tokens} tokens: {tok.decode(emitted)!r}")


def calls_of(tok, ids) -> list:
    return parse_tool_calls(tok.decode(ids))


def check_calls(calls, names) -> None:
    for call in calls:
        assert isinstance(call, ToolCall), call
        assert call.name in names
        jsonschema.validate(call.arguments, TOOLS[call.name])


# ------------------------------------------------------------------------------------------ byte tokenizer
def test_name_and_arguments_are_constrained():
    c = tool_call_constraint(TOK, TOOLS, "required", max_tokens=300)
    assert c.allowed([]).nonzero().flatten().tolist() == [OPEN]  # required: the turn opens with a call
    after_open = c.allowed([OPEN]).nonzero().flatten().tolist()
    assert after_open == [ord("\n"), ord("{")]
    seen = set()
    for seed in range(40):
        calls = calls_of(TOK, walk(c, TOK, seed))
        assert calls
        check_calls(calls, TOOLS)
        seen |= {call.name for call in calls}
    assert seen == set(TOOLS)


def test_named_tool_is_the_only_call():
    c = tool_call_constraint(TOK, TOOLS, "search", max_tokens=300)
    for seed in range(20):
        calls = calls_of(TOK, walk(c, TOK, seed))
        assert [call.name for call in calls] == ["search"]
        check_calls(calls, TOOLS)


def test_none_never_calls_nor_spells_the_tag():
    c = tool_call_constraint(TOK, TOOLS, "none", max_tokens=80)
    assert not c.allowed([])[OPEN]
    text = list(b"see <tool_call")
    assert not c.allowed(text)[ord(">")]  # the tag cannot be written out byte by byte either
    for seed in range(10):
        assert calls_of(TOK, walk(c, TOK, seed)) == []


def test_auto_is_text_or_text_then_calls():
    c = tool_call_constraint(TOK, TOOLS, "auto", max_tokens=300)
    allowed = c.allowed([])
    assert allowed[OPEN] and allowed[ord("H")] and any(allowed[e] for e in c.end_ids)
    kinds = set()
    for seed in range(40):
        ids = walk(c, TOK, seed, call_bias=0.02)
        calls = calls_of(TOK, ids)
        check_calls(calls, TOOLS)
        if calls:  # after a call: only more calls or the end, never text
            last = len(ids) - 1 - ids[::-1].index(CLOSE)
            assert all(t in (OPEN, CLOSE, ord("\n")) or OPEN in ids[last:] for t in ids[last + 1:])
        kinds.add(bool(calls))
    assert kinds == {True, False}


def test_not_parallel_means_one_call():
    c = tool_call_constraint(TOK, TOOLS, "required", max_tokens=400, parallel=False)
    for seed in range(10):
        assert len(calls_of(TOK, walk(c, TOK, seed, call_bias=0.9))) == 1


def test_a_call_starts_only_when_the_budget_holds_it():
    c = tool_call_constraint(TOK, TOOLS, "auto", max_tokens=200)
    room = c.max_tokens - c.needed - 1  # text tokens after which a call still fits, end token included
    text = list(b"x" * room)
    assert c.allowed(text)[OPEN]
    assert not c.allowed(text + [ord("x")])[OPEN]
    # started in time, the longest call still ends: follow the longest path the mask allows
    ids = text + [OPEN]
    while not c.is_finished():
        options = [t for t in c.allowed(ids).nonzero().flatten().tolist() if t not in c.end_ids]
        if not options:
            break
        ids.append(max(options, key=lambda t: (t not in (ord('"'), ord("}"), CLOSE), t)))
    assert c.is_complete()
    assert len(ids) + 1 <= c.max_tokens
    check_calls(calls_of(TOK, ids), TOOLS)


def test_budget_too_small():
    with pytest.raises(ConfigError, match="max_tokens"):
        tool_call_constraint(TOK, TOOLS, "required", max_tokens=20)
    c = tool_call_constraint(TOK, TOOLS, "auto", max_tokens=20)  # auto: only text fits
    assert not c.allowed([])[OPEN]


def test_tool_objects_and_openai_specs():
    from sleepagent.tools import tool

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    spec = {"type": "function", "function": {"name": "add", "parameters": add.json_schema}}
    for tools in ([add], [spec]):
        c = tool_call_constraint(TOK, tools, "add", max_tokens=200)
        for seed in range(5):
            (call,) = calls_of(TOK, walk(c, TOK, seed))
            assert call.name == "add" and set(call.arguments) == {"a", "b"}
            add.validate(call.arguments)
    with pytest.raises(ConfigError, match="tool_choice"):
        tool_call_constraint(TOK, [add], "sub", max_tokens=200)


def test_shipped_model_calls_under_the_grammar():
    from sleepagent.model import SleepModel

    sm = SleepModel.from_pretrained("docqa-small")
    tok = sm.tokenizer
    prompt = tok.render_turn("user", "Go to the next page.") + tok.generation_prompt()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine: a second thread mostly waits
    for choice in ("required", "calc", "search"):
        c = tool_call_constraint(tok, TOOLS, choice, max_tokens=80)
        with torch.inference_mode():
            state = sm.model.new_state(1)
            logits = sm.model.prefill(torch.tensor([prompt]), state)[0, -1]
            emitted: list[int] = []
            for _ in range(c.max_tokens):
                nxt = int(torch.argmax(c.apply(logits, emitted)))
                if nxt in c.end_ids:
                    break
                logits = sm.model.step(torch.tensor([nxt]), state)[0]
                emitted.append(nxt)
        calls = calls_of(tok, emitted)
        assert calls and not any(isinstance(call, MalformedToolCall) for call in calls)
        check_calls(calls, TOOLS if choice == "required" else [choice])
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ transformers
def _hf_tokenizer(tags_special: bool):
    """A byte-level BPE tokenizer built offline; the tags either are special tokens or plain text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sleepagent.model.hf import HFChatTokenizer
    from sleepagent.model.hf_tiny import TINY_CHAT_TEMPLATE

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if tags_special:
        specials += ["<tool_call>", "</tool_call>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = ['<tool_call>{"name": "calc", "arguments": {"expression": "1 + 2"}}</tool_call>',
              "Some text about pages, tools and calls; the next page please.", '{"q": "x", "k": 3}'] * 50
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.chat_template = TINY_CHAT_TEMPLATE
    return HFChatTokenizer(hf)


@pytest.mark.parametrize("tags_special", [True, False], ids=["tag-tokens", "tag-text"])
@pytest.mark.parametrize("choice", ["auto", "required", "calc", "none"])
def test_transformers_tokenizer(tags_special, choice):
    tok = _hf_tokenizer(tags_special)
    c = tool_call_constraint(tok, TOOLS, choice, max_tokens=200)
    assert (c._gate is None or c._gate.open_id is not None) == (tags_special or choice == "none")
    made = 0
    for seed in range(15):
        calls = calls_of(tok, walk(c, tok, seed, call_bias=0.5))
        check_calls(calls, TOOLS)
        if choice == "none":
            assert not calls
        elif choice != "auto":
            assert calls and (choice == "required" or [x.name for x in calls] == [choice])
        made += len(calls)
    assert made or choice == "none"


def test_text_tag_gating_bans_a_late_start():
    tok = _hf_tokenizer(tags_special=False)
    c = tool_call_constraint(tok, TOOLS, "auto", max_tokens=200)
    x = tok.encode("x")
    assert len(x) == 1
    late = x * (c.max_tokens - c.needed)
    allowed = c.allowed(late)
    assert not any(allowed[t] for t in range(len(c._vocab.token_bytes))
                   if b"<" in c._vocab.token_bytes[t] and t not in c.end_ids)
    assert allowed[x[0]] and c.allowed(late[:-1])[tok.encode("<")[0]]


def test_arguments_cannot_spell_a_tag():
    c = tool_call_constraint(TOK, TOOLS, "calc", max_tokens=200)
    inside = [OPEN] + list(b'{"name": "calc", "arguments": {"expression": "<tool_call')
    assert not c.allowed(inside)[ord(">")]
    assert c.allowed(inside)[ord("s")]  # only the tag itself is out


def test_avoid_pattern_matches_exactly_the_strings_without_the_word():
    import re

    from sleepagent.runtime.grammar import _avoid_pattern

    rx = re.compile(_avoid_pattern("tool_call>"), re.DOTALL)
    rng = random.Random(0)
    for _ in range(5000):
        s = "".join(rng.choice("tol_ca>x<\n") for _ in range(rng.randint(0, 16)))
        assert bool(rx.match(s)) == ("tool_call>" not in s), s


# ------------------------------------------------------------------------------------------ jump-forward
def _lone(c, emitted: list[int]) -> int | None:
    """The one token the mask allows after ``emitted`` (not an end token), else None."""
    options = torch.nonzero(c.allowed(emitted)).flatten().tolist()
    return options[0] if len(options) == 1 and options[0] not in c.end_ids else None


@pytest.mark.parametrize("tokenizer", ["byte", "hf-tag-tokens", "hf-tag-text"])
@pytest.mark.parametrize("choice", ["auto", "required", "search", "next_page"])
def test_forced_tokens_are_the_runs_of_lone_choices(choice, tokenizer):
    """At every point of random turns, ``forced`` is exactly the run of tokens the mask allows
    alone (judged by a second constraint, token by token), and stops where a choice begins; on
    the byte tokenizer and on BPE ones (where a text may have several tokenizations, so fewer
    runs are forced)."""
    tok = TOK if tokenizer == "byte" else _hf_tokenizer(tags_special=tokenizer == "hf-tag-tokens")
    c = tool_call_constraint(tok, TOOLS, choice, max_tokens=120)
    judge = tool_call_constraint(tok, TOOLS, choice, max_tokens=120)
    jumped = 0
    for seed in range(8):
        path = walk(c, tok, seed)
        for i in range(len(path) + 1):
            got = c.forced(path[:i], 1000)
            want, at = [], list(path[:i])
            while (t := _lone(judge, at)) is not None:
                want.append(t)
                at.append(t)
            assert got == want, (choice, seed, i, tok.decode(path[:i]))
            assert c.forced(path[:i], 2) == want[:2]  # the limit holds
            jumped += len(got)
    assert jumped > 0


def test_a_named_tool_is_read_as_one_piece_up_to_its_first_free_argument():
    c = tool_call_constraint(TOK, TOOLS, "search", max_tokens=300)
    assert c.forced([], 100) == [OPEN]  # the turn must open with the call
    forced = c.forced([OPEN, ord("{")], 100)
    assert TOK.decode(forced) == '"name": "search", "arguments": {"q": "'


@pytest.mark.parametrize("stop", [(), ('"sea',)], ids=["no-stop", "stop-inside-a-forced-run"])
def test_generate_turn_reads_forced_tokens_in_one_piece_and_writes_the_same_turn(stop):
    """The shipped model under a named tool: the turn written with jump-forward is the turn the
    token-by-token loop writes, in fewer decode steps (the name and the keys are read, not decoded)."""
    import anyio

    from sleepagent import Engine
    from sleepagent.model import SleepModel
    from sleepagent.runtime.generate import Sampler, generate_turn

    class Counting(Engine):
        steps = 0

        async def decode(self, session, token, consolidate=True):
            self.steps += 1
            return await super().decode(session, token, consolidate)

    class TokenByToken(Sampler):
        def forced(self, emitted, limit):
            return []

    sm = SleepModel.from_pretrained("docqa-small")
    tok = sm.tokenizer
    prompt = tok.render_turn("user", "Find the place.") + tok.generation_prompt()

    async def turn(picker_cls):
        engine = Counting(sm)
        try:
            s = engine.session()
            logits = await engine.prefill(s, prompt)
            c = tool_call_constraint(tok, TOOLS, "search", max_tokens=80)
            streamed: list[str] = []
            out = await generate_turn(engine, s, logits, picker=picker_cls(0.0, constraint=c), max_tokens=80,
                                      on_token=streamed.append, stop=stop)
            return out, engine.steps, "".join(streamed), s.state.tokens_seen
        finally:
            engine.close()

    jumped, steps, streamed, read = anyio.run(turn, Sampler)
    plain, plain_steps, _, plain_read = anyio.run(turn, TokenByToken)
    assert (jumped.full_text, jumped.tokens, jumped.finish) == (plain.full_text, plain.tokens, plain.finish)
    assert read == plain_read  # the model read exactly the tokens the token-by-token loop fed it
    assert streamed == jumped.full_text  # every token still reaches on_token, in order
    if stop:  # cut right after the stop string, inside the forced '"name": "search"'
        assert jumped.full_text == '<tool_call>{"name": "sea' and jumped.text == '<tool_call>{"name": '
        # the open tag is forced (a named tool), "{" the model's choice (the one decode step), and
        # the keys up to the stop one read
        assert steps == 1
        return
    [call] = calls_of(tok, tok.encode(jumped.full_text))
    assert isinstance(call, ToolCall) and call.name == "search"
    forced = 1 + len('"name": "search", "arguments": {"q": "')  # the open tag, then the keys: read, not decoded
    assert steps <= plain_steps - forced
