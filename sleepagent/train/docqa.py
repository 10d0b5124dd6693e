"""docqa: the demo model's task: read a long document through tool calls, then answer
multi-hop questions about it, possibly several turns later.

The document is a set of facts ``The road from Kalo leads to Miru.`` forming ONE cycle over n
places (shuffled, like depo's edges written as sentences), served by the paged
:class:`~sleepagent.tools.DocumentReader`. A transcript, rendered with exactly the tokens the
:class:`~sleepagent.Agent` reads and emits at run time::

    <|system|>{DOCQA_SYSTEM}{tool list}<|end|>
    <|user|>Read the document.<|end|>
    <|assistant|><tool_call>{"name": "next_page", "arguments": {}}</tool_call><|end|>
    <|tool|><tool_response>[page 1/P]
    ...</tool_response><|end|>
    ... one call per page, until the page that ends with [end of document] ...
    <|assistant|>Done.<|end|>
    <|user|>Where do 2 roads from Kalo lead?<|end|>
    <|assistant|>Miru<|end|>
    ... more questions ...

Loss on every assistant token (the tool calls, "Done.", the answers and their ``<|end|>``).
Difficulty = hops. The runtime sleeps at the pauses once the window is ``min_fill`` full, so the
earlier pages leave the attention window before the questions come (the last one may stay): most
facts must come from the fast weights. ``name_len=1`` names places with one capital letter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..agent import render_tool_prompt
from ..tokenizer import ByteTokenizer
from ..tools import DocumentReader, ToolRegistry, render_tool_call
from ..tools.calls import ToolResult
from .tasks import Example

__all__ = ["DocQA", "DOCQA_SYSTEM", "Transcript", "Turn", "question", "reader_tools", "pause_windows"]

DOCQA_SYSTEM = "You read documents with the tools, then answer questions about them."
READ_REQUEST = "Read the document."
DONE = "Done."

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def question(start: str, hops: int) -> str:
    """``Where do 2 roads from K lead?``: the place name comes last, 8 tokens before the answer,
    where a GDN layer's short convolution (``conv_size=12``) sees it, as it sees both names of a
    fact (``from K leads to M``, 11 apart)."""
    return f"Where do{'es' if hops == 1 else ''} {hops} road{'s' if hops > 1 else ''} from {start} lead?"


@dataclass
class Turn:
    role: str  # system | user | assistant | tool
    text: str


@dataclass
class Transcript:
    turns: list[Turn]
    document: str
    questions: list[tuple[str, str, int]]  # (question, answer, hops)


class DocQA:
    """Generator of docqa transcripts (see module docstring)."""

    name = "docqa"

    def __init__(
        self,
        n_places: tuple[int, int] = (6, 12),
        hops: tuple[int, ...] = (1, 2, 3),
        questions: int = 3,
        page_chars: int = 240,
        window: int = 256,
        name_len: int = 4,
    ) -> None:
        if name_len not in (1, 2, 4):
            raise ValueError(f"name_len must be 1 (a capital letter), 2 or 4 (syllables), got {name_len}")
        if name_len == 1 and n_places[1] > 26:
            raise ValueError("one-letter names allow at most 26 places")
        self.name_len = name_len
        self.n_places, self.hops, self.questions = n_places, hops, questions
        self.page_chars, self.window = page_chars, window
        self.tokenizer = ByteTokenizer()
        self.vocab_size = self.tokenizer.vocab_size
        self.pad_id = self.tokenizer.pad_id

    def _names(self, rng: random.Random, n: int) -> list[str]:
        names: set[str] = set()
        if self.name_len == 1:
            names.update(rng.sample("ABCDEFGHIJKLMNOPQRSTUVWXYZ", n))
        while len(names) < n:
            syllables = self.name_len // 2
            names.add("".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables)).capitalize())
        out = sorted(names)
        rng.shuffle(out)
        return out

    def transcript(
        self, rng: random.Random, hops: int | None = None, n: int | None = None, hop_seq: list[int] | None = None
    ) -> Transcript:
        """One transcript; ``hops`` fixes every question's hop count, ``hop_seq`` each in turn."""
        n = n if n is not None else rng.randint(*self.n_places)
        names = self._names(rng, n)
        facts = [f"The road from {names[i]} leads to {names[(i + 1) % n]}." for i in range(n)]
        rng.shuffle(facts)
        document = " ".join(facts)
        reader = DocumentReader.from_text(document, page_chars=self.page_chars)
        system = DOCQA_SYSTEM + render_tool_prompt(ToolRegistry(reader_tools(reader)))
        turns = [Turn("system", system), Turn("user", READ_REQUEST)]
        for number in range(1, reader.page_count + 1):
            turns.append(Turn("assistant", render_tool_call("next_page", {})))
            turns.append(Turn("tool", reader.render_page(number)))
        turns.append(Turn("assistant", DONE))
        questions = []
        for start, k in self._plan(rng, n, hops, hop_seq):
            q = question(names[start], k)
            a = names[(start + k) % n]
            turns += [Turn("user", q), Turn("assistant", a)]
            questions.append((q, a, k))
        return Transcript(turns, document, questions)

    def _plan(
        self, rng: random.Random, n: int, hops: int | None, hop_seq: list[int] | None
    ) -> list[tuple[int, int]]:
        """The questions' (start, hops) pairs, all distinct: a repeated question could be answered
        by copying the earlier answer from the window. Up to ``n`` questions draw distinct starts;
        beyond that a start comes back with another hop count (at most ``n`` per hop count)."""
        if hops is not None:
            ks = [hops] * min(self.questions, n)
        elif hop_seq is not None:
            ks = list(hop_seq)
        else:
            ks = [rng.choice(self.hops) for _ in range(self.questions)]
        plan: list[tuple[int, int]] = []
        for k in ks:
            fresh = [s for s in range(n) if all(s != start for start, _ in plan)]
            unused = fresh or [s for s in range(n) if (s, k) not in plan]
            if unused:
                plan.append((rng.choice(unused), k))
        return plan

    def render(self, t: Transcript) -> Example:
        """Token ids exactly as the Agent reads/emits them; loss on the assistant's tokens."""
        tok = self.tokenizer
        ids: list[int] = []
        mask: list[bool] = []
        answers: list[list[int]] = []
        pauses: list[int] = []  # tokens read when the agent waits (its turn's <|end|> is still queued)
        for i, turn in enumerate(t.turns):
            if turn.role == "assistant":
                ids.append(tok.generation_prompt()[0])
                mask.append(False)
                start = len(ids)
                body = tok.encode(turn.text) + [tok.end_id]
                ids += body
                mask += [True] * len(body)
                pauses.append(len(ids) - 1)
                if t.turns[i - 1].role == "user" and t.turns[i - 1].text != READ_REQUEST:
                    answers.append(list(range(start, len(ids))))
            elif turn.role == "tool":
                piece = tok.render_tool_result(ToolResult(call_id="", name="next_page", content=turn.text).render())
                ids += piece
                mask += [False] * len(piece)
            else:
                piece = tok.render_turn(turn.role, turn.text, trusted=turn.role == "system")
                ids += piece
                mask += [False] * len(piece)
        hops = [k for _, _, k in t.questions]
        return Example(ids, mask, answers, hops[0] if len(set(hops)) == 1 else 0, {"hops": hops, "pauses": pauses})

    def sample(self, rng: random.Random, difficulty: int | None = None, n: int | None = None) -> Example:
        return self.render(self.transcript(rng, difficulty, n))

    def sample_batch(self, rng: random.Random, size: int) -> list[Example]:
        """``size`` transcripts over documents of one size with the same hop counts: names and
        facts have fixed lengths, so the transcripts share their length and pause points, and
        train as one batch."""
        n = rng.randint(*self.n_places)
        # questions' lengths vary with k; each k at most n times (distinct questions), as even as possible
        hop_seq = [self.hops[i % len(self.hops)] for i in range(min(self.questions, n * len(self.hops)))]
        rng.shuffle(hop_seq)
        return [self.render(self.transcript(rng, n=n, hop_seq=hop_seq)) for _ in range(size)]

    def test_difficulties(self) -> list[int]:
        return sorted(set(self.hops))


def reader_tools(reader: DocumentReader) -> list:
    """The tools a docqa agent gets: ``next_page`` alone. The model reads front to back, and a
    byte-level model pays for every character of the tool list in its system prompt."""
    return [t for t in reader.tools if t.name.endswith("next_page")]


def pause_windows(n_tokens: int, pauses: list[int], window: int, min_fill: float) -> list[int]:
    """The windows the Engine produces for a transcript under ``SleepPolicy(when="pause",
    min_fill=...)`` (with on_wake="finish"): a sleep at every pause where the window is at least
    ``min_fill`` full, and a forced one whenever it is full. Feed to the training forward as
    ``window_lengths`` so training sees the runtime's boundaries."""
    out, start = [], 0
    pause_set = set(pauses)
    for read in range(1, n_tokens + 1):
        if read - start == window:
            out.append(window)
            start = read
        elif read in pause_set and read - start >= min_fill * window and read < n_tokens:
            out.append(read - start)
            start = read
    if n_tokens > start:
        out.append(n_tokens - start)
    return out
