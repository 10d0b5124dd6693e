"""docqa: the demo model's task: read long documents through tool calls, then answer multi-hop
questions about them, possibly several turns (and several documents) later.

A document is a set of facts ``The road from K leads to M.`` forming ONE cycle over n places
(shuffled, like depo's edges written as sentences), served one page per tool call. A session
reads one or more documents, one after another; every document has its own places (disjoint
names), so a question names exactly one fact chain. A transcript, rendered with exactly the
tokens the :class:`~sleepagent.Agent` reads and emits at run time::

    <|system|>{system prompt}{tool list}<|end|>
    <|user|>Read the document.<|end|>
    <|assistant|><tool_call>{"name": "next_page", "arguments": {}}</tool_call><|end|>
    <|tool|><tool_response>[page 1/P]
    ...</tool_response><|end|>
    ... one call per page, until the page that ends with [end of document] ...
    <|assistant|>Done.<|end|>
    <|user|>Where do 2 roads from K lead?<|end|>
    <|assistant|>M<|end|>
    ... more questions ...
    <|user|>Read the next document.<|end|>          (sessions of several documents)
    ... its pages, "Done.", then questions about it and about the earlier documents ...

Loss on every assistant token (the tool calls, "Done.", the answers and their ``<|end|>``).
Difficulty = hops. The runtime sleeps at the pauses once the window is ``min_fill`` full, so the
earlier pages leave the attention window before the questions come (the last one may stay):
most facts must come from the fast weights. ``name_len=1`` names places with one capital letter.

``varied=True`` draws, per batch, the conventions a user's code may differ in: the paging tool's
name and docstring, whether pages carry a ``[page i/P]`` header, and the wording of the read
requests (:class:`Conventions`), so the trained model reads through "a paging tool with any
reasonable name", not only the demo's. The system prompt is the checkpoint's own
(:data:`DOCQA_SYSTEM`, recorded in its ``prompt.json``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..runtime.render import render_system_turn, render_tool_prompt
from ..tokenizer import ByteTokenizer, Role
from ..tools import DocumentReader, render_tool_call
from ..tools.calls import ToolResult
from ..tools.document import END_MARKER, paginate
from .example import Example

__all__ = [
    "DOCQA_SYSTEM",
    "DONE",
    "NEXT_REQUEST",
    "QA",
    "READ_REQUEST",
    "Conventions",
    "DocQA",
    "Transcript",
    "Turn",
    "page_spec",
    "page_text",
    "pause_windows",
    "question",
    "reader_tools",
]

DOCQA_SYSTEM = "You read documents with the tools, then answer questions about them."
READ_REQUEST = "Read the document."
NEXT_REQUEST = "Read the next document."
DONE = "Done."

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# What a user's paging tool may be called and say about itself (varied=True). The names are
# built from parts, so held-out combinations exist; the runtime also constrains a call's name to
# the registered tools, so the model never has to spell an unseen name from memory.
_VERBS = ("read", "get", "fetch", "load", "turn", "show", "next", "read_next", "get_next", "fetch_next")
_NOUNS = ("page", "next_page", "more", "chunk", "section", "part", "text", "doc_page", "document_page")
_SOLO = ("next_page", "read_page", "page", "read", "more", "continue_reading", "pager", "next", "nextPage", "readPage")
_DESCRIPTIONS = (
    "Read the next page of the document.",
    "Return the next page of the document.",
    "Get the next page.",
    "Fetch the next part of the text.",
    "Read more of the document.",
    "Turn the page.",
    "Next chunk of the document.",
    "Read the document page by page.",
    "Load the next section of the document.",
    "Returns the next unread page.",
    "Read the next unread page of the document.",
    "Give me the next page of text.",
    "",
)
_READ_REQUESTS = (READ_REQUEST, READ_REQUEST, READ_REQUEST, "Please read the document.", "Read this document.",
                  "Read the whole document.")
_NEXT_REQUESTS = (NEXT_REQUEST, NEXT_REQUEST, "Now read the next document.", "Read the other document.",
                  "Read another document.")


def question(start: str, hops: int) -> str:
    """``Where do 2 roads from K lead?``: the place name comes last, 8 tokens before the answer,
    where a GDN layer's short convolution (``conv_size=12``) sees it, as it sees both names of a
    fact (``from K leads to M``, 11 apart)."""
    return f"Where do{'es' if hops == 1 else ''} {hops} road{'s' if hops > 1 else ''} from {start} lead?"


# How pages may be headed and how a document's end may be marked (varied=True). Built from
# parts, so forms nobody listed still come up; the demo reader's own are "[page i/P]" and
# "[end of document]".
_HEADER_FORMS = ("[page {i}/{n}]", "page {i}/{n}", "page {i} of {n}", "[{i}/{n}]", "({i}/{n})", "{i}/{n}",
                 "p. {i}/{n}", "page {i}")
_HEADER_FRAMES = ("{}", "{}", "--- {} ---", "-- {} --", "== {} ==", "# {}", "*** {} ***", "<{}>")
_END_WORDS = ("end of document", "end of the document", "end", "the end", "end of text", "end of file",
              "document ends", "no more pages", "eof", "end of doc")
_END_FRAMES = ("[{}]", "--- {} ---", "({})", "<{}>", "*** {} ***", "{}", "{}.", "-- {} --", "== {} ==", "# {}")
# A paging tool may take the page to read (1-based) instead of keeping its own place.
_PAGE_ARGS = ("page", "page", "n", "page_number", "number", "num", "p", "index", "page_no", "i", "which")
_ARG_DESCRIPTIONS = (
    "Read one page of the document.",
    "Return page `{arg}` of the document.",
    "Get a page by number.",
    "Read page {arg} (1-based).",
    "Fetch the given page of the text.",
    "Load a page of the document.",
    "",
)


def _case(rng: random.Random, text: str) -> str:
    """``text`` as written, capitalised, upper case or title case (placeholders kept)."""
    cased = rng.choice((text, text, text.capitalize(), text.upper(), text.title()))
    return cased.replace("{I}", "{i}").replace("{N}", "{n}")


@dataclass(frozen=True)
class Conventions:
    """How one session's paging tool and requests are worded. The default is the demo's reader
    (``next_page``, pages headed ``[page i/P]``, the last one ending ``[end of document]``);
    ``docstring=None`` keeps the :class:`~sleepagent.tools.DocumentReader`'s own description.

    ``header``: a format with ``{i}`` and ``{n}`` (page i of n) written above each page, or ""
    for none; ``end_marker``: the line after the last page's text; ``page_arg``: the name of an
    integer argument the tool takes, the 1-based page to read (the model then counts its own
    pages, ``{"page": 2}``), or None for a tool that keeps its own place."""

    tool_name: str = "next_page"
    docstring: str | None = None
    header: str = "[page {i}/{n}]"
    read_request: str = READ_REQUEST
    next_request: str = NEXT_REQUEST
    end_marker: str = END_MARKER
    page_arg: str | None = None

    @property
    def headers(self) -> bool:
        return bool(self.header)

    def call_arguments(self, page: int) -> dict[str, Any]:
        """The arguments of the call that reads page ``page`` (1-based)."""
        return {self.page_arg: page} if self.page_arg else {}

    @classmethod
    def draw(cls, rng: random.Random) -> Conventions:
        page_arg = rng.choice(_PAGE_ARGS) if rng.random() < 0.3 else None
        name = rng.choice(_SOLO) if rng.random() < 0.35 else f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}"
        if page_arg is not None:
            docstring = rng.choice(_ARG_DESCRIPTIONS).format(arg=page_arg)
        else:
            docstring = rng.choice(_DESCRIPTIONS)
        roll = rng.random()
        if roll < 0.3:
            header = "[page {i}/{n}]"
        elif roll < 0.55:
            header = ""
        else:
            header = rng.choice(_HEADER_FRAMES).format(_case(rng, rng.choice(_HEADER_FORMS)))
        end = END_MARKER if rng.random() < 0.4 else rng.choice(_END_FRAMES).format(_case(rng, rng.choice(_END_WORDS)))
        return cls(
            tool_name=name, docstring=docstring, header=header,
            read_request=rng.choice(_READ_REQUESTS), next_request=rng.choice(_NEXT_REQUESTS),
            end_marker=end, page_arg=page_arg,
        )


def page_spec(name: str, description: str, page_arg: str | None = None) -> dict[str, Any]:
    """The OpenAI-format spec of a paging tool: no arguments, or one integer ``page_arg`` (what
    ``@tool`` gives for ``def name(page: int) -> str`` with that docstring)."""
    props = {page_arg: {"type": "integer"}} if page_arg else {}
    params: dict[str, Any] = {"type": "object", "properties": props}
    if page_arg:
        params["required"] = [page_arg]
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


def tool_spec(name: str, description: str) -> dict[str, Any]:  # kept for callers
    """The OpenAI-format spec of a no-argument paging tool (what ``@tool`` gives for ``def
    name() -> str`` with that docstring)."""
    return {"type": "function",
            "function": {"name": name, "description": description, "parameters": {"type": "object", "properties": {}}}}


def page_text(page: str, number: int, total: int, headers: bool | str = True,
              end_marker: str = END_MARKER) -> str:
    """What the paging tool returns for one page: the header (``True``: the demo's ``[page i/P]``;
    a string: a format with ``{i}`` and ``{n}``; false or "": none), the text, and the end marker
    on the last page."""
    fmt = "[page {i}/{n}]" if headers is True else headers or ""
    out = f"{fmt.format(i=number, n=total)}\n{page}" if fmt else page
    return out + (f"\n{end_marker}" if number == total else "")


@dataclass
class Turn:
    role: Role  # system | user | assistant | tool
    text: str


class QA(NamedTuple):
    question: str
    answer: str
    hops: int
    doc: int = 0  # which document of the session (0-based) the question is about
    after: int = 0  # how many documents had been read when it was asked, minus one


@dataclass
class Transcript:
    turns: list[Turn]
    documents: list[str]
    questions: list[QA]
    pages: list[list[str]] = field(default_factory=list)  # per document, the tool's outputs
    conventions: Conventions = field(default_factory=Conventions)
    tool_specs: list[dict[str, Any]] = field(default_factory=list)  # what the system turn lists

    @property
    def document(self) -> str:
        """The first (or only) document's text."""
        return self.documents[0]


class DocQA:
    """Generator of docqa transcripts (see module docstring).

    ``tokenizer``: the project's byte tokenizer (default), or a transformers model's chat
    tokenizer (:class:`~sleepagent.model.hf.HFChatTokenizer`) to fine-tune that model.
    ``documents``: how many documents a session reads, a (min, max) range drawn per batch; the
    places of all of them are distinct, so with one-letter names they add up to at most 26.
    ``questions``: questions about each document right after it is read; after a later
    document, ``recall`` questions about each earlier one come too (default ``questions // 2``).
    """

    name = "docqa"
    system_prompt = DOCQA_SYSTEM  # written to the checkpoint's prompt.json

    def __init__(
        self,
        n_places: tuple[int, int] = (6, 12),
        hops: tuple[int, ...] = (1, 2, 3),
        questions: int = 3,
        page_chars: int = 240,
        window: int = 256,
        name_len: int = 4,
        documents: tuple[int, int] = (1, 1),
        recall: int | None = None,
        varied: bool = False,
        tokenizer: Any = None,
    ) -> None:
        if name_len not in (1, 2, 4):
            raise ValueError(f"name_len must be 1 (a capital letter), 2 or 4 (syllables), got {name_len}")
        documents = tuple(documents)  # type: ignore[assignment]
        if not (len(documents) == 2 and 1 <= documents[0] <= documents[1]):
            raise ValueError(f"documents must be a (min, max) range with 1 <= min <= max, got {documents}")
        if name_len == 1 and n_places[0] * documents[1] > 26:
            raise ValueError("one-letter names allow at most 26 places in a session")
        if name_len == 1 and n_places[1] > 26:
            raise ValueError("one-letter names allow at most 26 places")
        self.name_len = name_len
        self.n_places, self.hops, self.questions = tuple(n_places), tuple(hops), questions
        self.page_chars, self.window = page_chars, window
        self.documents = documents
        self.recall = questions // 2 if recall is None else recall
        self.varied = varied
        # the project's byte tokenizer, or a transformers model's (HFChatTokenizer: fine-tuning a
        # pretrained hybrid renders the same transcripts in its own chat format)
        self.tokenizer = tokenizer or ByteTokenizer()
        self.vocab_size = self.tokenizer.vocab_size
        self.pad_id = self.tokenizer.pad_id

    # --- sizes ----------------------------------------------------------------------------------

    def max_places(self, n_docs: int) -> int:
        """The largest document a session of ``n_docs`` documents can hold (distinct names)."""
        if self.name_len == 1:
            return min(self.n_places[1], 26 // n_docs)
        return self.n_places[1]

    def _names(self, rng: random.Random, n: int, taken: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        names: set[str] = set()
        if self.name_len == 1:
            names.update(rng.sample([c for c in _LETTERS if c not in taken], n))
        while len(names) < n:
            syllables = self.name_len // 2
            name = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables)).capitalize()
            if name not in taken:
                names.add(name)
        out = sorted(names)
        rng.shuffle(out)
        return out

    # --- transcripts ----------------------------------------------------------------------------

    def transcript(
        self,
        rng: random.Random,
        hops: int | None = None,
        n: int | list[int] | None = None,
        hop_seq: list[int] | list[list[tuple[int, int]]] | None = None,
        conventions: Conventions | None = None,
    ) -> Transcript:
        """One session. ``n``: places per document (an int for every document, or one per
        document; its length sets how many documents are read). ``hops`` fixes every question's
        hop count; ``hop_seq`` gives the questions' hop counts in turn (a single document), or
        :meth:`hop_blocks` (any number of documents)."""
        sizes = self._sizes(rng, n)
        conv = conventions or Conventions()
        cycles: list[list[str]] = []
        taken: set[str] = set()
        for size in sizes:
            names = self._names(rng, size, taken)
            taken.update(names)
            cycles.append(names)
        documents, pages = [], []
        for names in cycles:
            m = len(names)
            facts = [f"The road from {names[i]} leads to {names[(i + 1) % m]}." for i in range(m)]
            rng.shuffle(facts)
            text = " ".join(facts)
            documents.append(text)
            raw = paginate(text, self.page_chars)
            pages.append([page_text(p, i + 1, len(raw), conv.header, conv.end_marker) for i, p in enumerate(raw)])
        if hop_seq is None:
            blocks = self.hop_blocks(rng, sizes, hops)
        elif hop_seq and isinstance(hop_seq[0], int):
            blocks = [[(0, k) for k in hop_seq]]
        else:
            blocks = hop_seq  # type: ignore[assignment]
        spec = page_spec(conv.tool_name, self._description(conv, documents[0]), conv.page_arg)
        turns = [Turn("system", DOCQA_SYSTEM + render_tool_prompt([spec]))]
        questions: list[QA] = []
        for d in range(len(cycles)):
            turns.append(Turn("user", conv.read_request if d == 0 else conv.next_request))
            for number, page in enumerate(pages[d], 1):
                turns.append(Turn("assistant", render_tool_call(conv.tool_name, conv.call_arguments(number))))
                turns.append(Turn("tool", page))
            turns.append(Turn("assistant", DONE))
            for doc, k in blocks[d] if d < len(blocks) else []:
                qa = self._ask(rng, cycles[doc], doc, k, d, questions)
                if qa is not None:
                    turns += [Turn("user", qa.question), Turn("assistant", qa.answer)]
                    questions.append(qa)
        return Transcript(turns, documents, questions, pages, conv, [spec])

    def hop_blocks(self, rng: random.Random, sizes: list[int], hops: int | None = None) -> list[list[tuple[int, int]]]:
        """Per document read, the ``(doc, hops)`` of the questions asked right after it:
        ``questions`` about it and ``recall`` about each earlier one, shuffled together. Hop
        counts are balanced per document, and each (start, hops) pair is asked at most once per
        session, so a document of n places takes at most n questions per hop count."""
        ks = (hops,) if hops is not None else self.hops
        used = [dict.fromkeys(ks, 0) for _ in sizes]
        blocks = []
        for d in range(len(sizes)):
            block = []
            for doc, count in [(d, self.questions)] + [(e, self.recall) for e in range(d)]:
                for _ in range(count):
                    avail = [k for k in ks if used[doc][k] < sizes[doc]]
                    if not avail:
                        break
                    least = min(used[doc][k] for k in avail)
                    k = rng.choice([k for k in avail if used[doc][k] == least])
                    used[doc][k] += 1
                    block.append((doc, k))
            rng.shuffle(block)
            blocks.append(block)
        return blocks

    def _description(self, conv: Conventions, document: str) -> str:
        if conv.docstring is not None:
            return conv.docstring
        # the demo reader's own next_page description (render_tool_prompt keeps its first sentence)
        reader = DocumentReader.from_text(document, page_chars=self.page_chars)
        return reader_tools(reader)[0].description

    def _sizes(self, rng: random.Random, n: int | list[int] | None) -> list[int]:
        if isinstance(n, list):
            return list(n)
        n_docs = rng.randint(*self.documents)
        if n is not None:
            return [n] * n_docs
        hi = self.max_places(n_docs)
        return [rng.randint(min(self.n_places[0], hi), hi) for _ in range(n_docs)]

    @staticmethod
    def _ask(rng: random.Random, names: list[str], doc: int, k: int, after: int, asked: list[QA]) -> QA | None:
        """A question about document ``doc``: a start not asked about yet if there is one, else
        one not asked about with ``k`` hops (a repeated question could be answered by copying
        the earlier answer from the window)."""
        n = len(names)
        used = [(names.index(q.question.rsplit(" ", 2)[1]), q.hops) for q in asked if q.doc == doc]
        fresh = [s for s in range(n) if all(s != start for start, _ in used)]
        unused = fresh or [s for s in range(n) if (s, k) not in used]
        if not unused:
            return None
        start = rng.choice(unused)
        return QA(question(names[start], k), names[(start + k) % n], k, doc, after)

    # --- tokens ---------------------------------------------------------------------------------

    def render(self, t: Transcript) -> Example:
        """Token ids exactly as the Agent reads/emits them; loss on the assistant's tokens."""
        tok = self.tokenizer
        ids: list[int] = []
        mask: list[bool] = []
        answers: list[list[int]] = []
        pauses: list[int] = []  # tokens read when the agent waits (its turn's <|end|> is still queued)
        requests = {t.conventions.read_request, t.conventions.next_request}
        for i, turn in enumerate(t.turns):
            if turn.role == "assistant":
                opening = tok.generation_prompt()
                ids += opening
                mask += [False] * len(opening)
                start = len(ids)
                text, close = tok.encode(turn.text), tok.close_turn()
                # the text and the end-of-turn token are targets; the rest of the closing (a
                # chat template's newline) is read, not written
                ids += text + close
                mask += [True] * (len(text) + 1) + [False] * (len(close) - 1)
                pauses.append(start + len(text))  # the agent waits with its closing still queued
                if t.turns[i - 1].role == "user" and t.turns[i - 1].text not in requests:
                    answers.append(list(range(start, start + len(text) + 1)))
            elif turn.role == "tool":
                piece = tok.render_tool_result(ToolResult(call_id="", name="", content=turn.text).render())
                ids += piece
                mask += [False] * len(piece)
            elif turn.role == "system":  # with the tool list, in the tokenizer's own format
                piece = render_system_turn(tok, DOCQA_SYSTEM, t.tool_specs)
                ids += piece
                mask += [False] * len(piece)
            else:
                piece = tok.render_turn(turn.role, turn.text)
                ids += piece
                mask += [False] * len(piece)
        hops = [q.hops for q in t.questions]
        meta = {"hops": hops, "pauses": pauses, "docs": [q.doc for q in t.questions],
                "after": [q.after for q in t.questions], "n_docs": len(t.documents)}
        return Example(ids, mask, answers, hops[0] if len(set(hops)) == 1 else 0, meta)

    def sample(self, rng: random.Random, difficulty: int | None = None, n: int | None = None) -> Example:
        conv = Conventions.draw(rng) if self.varied else None
        return self.render(self.transcript(rng, difficulty, n, conventions=conv))

    def sample_batch(self, rng: random.Random, size: int) -> list[Example]:
        """``size`` transcripts with one document count and size, one set of conventions and the
        same hop counts: names and facts have fixed lengths, so the transcripts share their length
        and pause points, and train as one batch."""
        n_docs = rng.randint(*self.documents)
        hi = self.max_places(n_docs)
        sizes = [rng.randint(min(self.n_places[0], hi), hi) for _ in range(n_docs)]
        conv = Conventions.draw(rng) if self.varied else None
        blocks = self.hop_blocks(rng, sizes)
        return [self.render(self.transcript(rng, n=sizes, hop_seq=blocks, conventions=conv)) for _ in range(size)]

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
