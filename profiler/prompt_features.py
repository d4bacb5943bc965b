"""Hand-written cues in a prompt that say how long a good answer is.

A model answering "Classify the tweet as positive or negative" writes a word; one asked to "write a
detailed business plan" writes a thousand. With a few hundred training prompts a learner cannot
discover those verbs' meaning from n-grams alone, so the cues name them. The text is split into
words once and every cue is a set lookup of its 1-3 word phrases (regular expressions only for
requested sizes, and only when a size noun is present), so a request's cues cost tens of
microseconds.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from typing import Final

import numpy as np
import numpy.typing as npt

_NUMBER_WORDS: Final = {
    "a": 1,
    "an": 1,
    "one": 1,
    "single": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twenty": 20,
    "fifty": 50,
    "hundred": 100,
}
_NUM = r"(\d[\d,]*|" + "|".join(_NUMBER_WORDS) + r")"

# Requested size: "in 3 sentences", "a 2000 word essay", "50 short stories", "5 countries".
_RE_WORDS = re.compile(_NUM + r"(?:\s*-\s*\d[\d,]*)?[\s-]+words?\b")
_RE_SENTENCES = re.compile(_NUM + r"\s+(?:short\s+|brief\s+)?sentences?\b")
_RE_PARAGRAPHS = re.compile(_NUM + r"\s+(?:short\s+|brief\s+)?paragraphs?\b")
_RE_ITEMS = re.compile(
    r"\b(\d+|two|three|four|five|six|seven|eight|nine|ten|twenty|fifty)\s+(?:[a-z]+\s+){0,2}"
    r"(?:ideas|examples|ways|tips|items|points|reasons|questions|names|titles|stories|steps|"
    r"things|words|facts|options|suggestions|countries|cities|books|movies|songs|places|"
    r"sentences|bullet|lines|jokes|products|recipes|quotes|topics|activities)\b"
)

_HAS_COUNT = re.compile(r"\d|\b(?:two|three|four|five|six|seven|eight|nine|ten|twenty|fifty)\b")
_FIRST_SENTENCE = re.compile(r"(?<=[.!?:])\s|\n")


class _Cue:
    """A cue fires when the text holds one of its phrases (1-3 words) or a word with its stem."""

    __slots__ = ("name", "phrases", "stems")

    def __init__(self, name: str, phrases: str, stems: tuple[str, ...] = ()) -> None:
        self.name = name
        self.phrases = frozenset(p.strip() for p in phrases.split("|"))
        self.stems = stems

    def fires(self, grams: set[str], words: list[str]) -> bool:
        if not self.phrases.isdisjoint(grams):
            return True
        return bool(self.stems) and any(w.startswith(self.stems) for w in words)


_CUES: Final[tuple[_Cue, ...]] = (
    # Short answers: labels, single facts, edits of a given text.
    _Cue(
        "classify",
        "classify|category|categories|label|sentiment|identify|decide|determine whether|"
        "indicate|true or false|yes or no|which of|is it|genre|part of speech|offensive",
        ("categori",),
    ),
    _Cue(
        "edit",
        "rewrite|re write|paraphrase|rephrase|correct|fix the|proofread|convert|translate|"
        "change the|replace|shorten|simplify|make it",
        ("capitali",),
    ),
    _Cue("extract", "extract|retrieve|find the|pick|select|choose|name the"),
    _Cue("given", "given|following|below|this text|the text|the sentence|the tweet"),
    _Cue(
        "brief",
        "brief|briefly|short|concise|concisely|one word|single word|in a word|one sentence|"
        "one line|tl dr|tldr|quick|quickly|just the|just answer|just give|just say|just tell|"
        "only answer|only respond|only reply|only output|only return|only give",
        ("summar",),
    ),
    _Cue("title", "title|headline|slogan|tagline|name for|hashtag|hashtags|emoji|emojis|tweet"),
    # Long answers: open generation, plans, code, explanations.
    _Cue(
        "write_long", "write|compose|draft|create|generate|design|develop|produce|prepare|outline"
    ),
    _Cue(
        "long_form",
        "essay|story|stories|article|blog|post|report|script|speech|novel|chapter|whitepaper|"
        "paper|plan|proposal|guide|tutorial|lesson|syllabus|curriculum|course|itinerary|"
        "interview|dialog|dialogue|screenplay|letter|cover letter|review|analysis|campaign|"
        "strategy|documentation|manual|book|presentation|rubric",
    ),
    _Cue("poem", "poem|song|lyrics|rap|haiku|limerick|sonnet|verse|joke"),
    _Cue(
        "detail",
        "detailed|in detail|comprehensive|thorough|thoroughly|in depth|step by step|elaborate|"
        "extensive|complete|full|long|lengthy|at least",
    ),
    _Cue(
        "explain",
        "explain|describe|discuss|elaborate|compare|contrast|why|how do|how does|how can|"
        "how to|how should|how would|what are|pros and cons|advantages|difference",
        ("analy",),
    ),
    _Cue("list", "list|steps|ways|ideas|tips|examples|suggestions|options", ("recommend",)),
    _Cue(
        "code",
        "code|python|javascript|typescript|java|c++|c#|sql|html|css|bash|script|function|"
        "class|program|algorithm|api|regex|game|app|def|return",
        ("implement",),
    ),
    _Cue("math", "calculate|solve|equation|prove", ("math",)),
    _Cue("roleplay", "act as|act like|pretend|you are a|imagine you|role play|roleplay"),
)
# Cues that only count at the very start of the prompt.
_QUESTION_START: Final = _Cue(
    "fact_question",
    "what|who|when|where|which|how many|how much|is|are|was|were|does|do|did|can|could",
).phrases
_GREETING_START: Final = _Cue(
    "greeting", "hi|hello|hey|thanks|thank you|good morning|good evening"
).phrases
_WORD = re.compile(r"[a-z0-9][a-z0-9+#']*")
_CODE_SYMBOLS = re.compile(r"```|[{};]\s*(?:\n|$)")
_ARITHMETIC = re.compile(r"\d\s*[-+*/^=]\s*\d")
_CUE_NAMES: Final = (
    *(c.name for c in _CUES[:5]),
    "fact_question",
    *(c.name for c in _CUES[5:]),
    "greeting",
)


def _grams(words: list[str]) -> set[str]:
    grams = set(words)
    grams.update(f"{a} {b}" for a, b in itertools.pairwise(words))
    grams.update(f"{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:], strict=False))
    return grams


def _cue_values(text: str) -> list[float]:
    """One 0/1 value per cue name in ``_CUE_NAMES`` order, from one tokenisation of ``text``."""
    words = _WORD.findall(text.replace("-", " ").replace(";", " "))
    grams = _grams(words)
    fired = {c.name: c.fires(grams, words) for c in _CUES}
    start = words[:2]
    fired["fact_question"] = bool(start) and (
        start[0] in _QUESTION_START or " ".join(start) in _QUESTION_START
    )
    fired["greeting"] = bool(start) and (
        start[0] in _GREETING_START or " ".join(start) in _GREETING_START
    )
    if not fired["code"] and _CODE_SYMBOLS.search(text):
        fired["code"] = True
    if not fired["math"] and _ARITHMETIC.search(text):
        fired["math"] = True
    return [1.0 if fired[name] else 0.0 for name in _CUE_NAMES]


FEATURE_NAMES: Final[tuple[str, ...]] = (
    "log_chars",
    "log_words",
    "log_instruction_words",
    "log_input_words",
    "has_input_block",
    "n_lines",
    "question_marks",
    "ends_with_question",
    "log_requested_words",
    "log_requested_sentences",
    "log_requested_paragraphs",
    "log_requested_items",
    *(f"cue_{name}" for name in _CUE_NAMES),
    *(f"head_{name}" for name in _CUE_NAMES),
    # Interactions a linear model cannot form itself.
    "log_material_words",
    "edit_x_material",
    "head_edit_x_material",
    "classify_x_words",
    "write_x_long_form",
    "short_fact_question",
    "explain_x_detail",
)


_NON_SPACE = re.compile(r"\S")
_STRIP_CHUNK = 4096


def _strip_bounds(text: str) -> tuple[int, int]:
    """``text.strip()`` as a slice ``[start, end)``.

    The end comes from ``rstrip`` on chunks at C speed: a Python loop over trailing whitespace
    made 200k trailing spaces cost ~10 ms.
    """
    first = _NON_SPACE.search(text)
    if first is None:
        return 0, 0
    # Strip chunk by chunk from the end, so the cost follows the trailing whitespace, not the
    # text's length (a whole-text ``rstrip`` copies a 5M-character prompt: ~0.7 ms).
    end = len(text)
    while True:
        chunk_start = max(first.start(), end - _STRIP_CHUNK)
        kept = len(text[chunk_start:end].rstrip())
        if kept:
            return first.start(), chunk_start + kept
        end = chunk_start


# Spans longer than this are counted on their head and tail only, scaled to the whole: a
# document's size features then cost the same at 100k characters as at 10M (its log scale
# hides the sampling error), where a full count of a 540k-character prompt took ~1.2 ms.
_COUNT_SPAN = 1 << 16


def _count(text: str, sub: str, start: int, end: int) -> float:
    """Occurrences of ``sub`` in ``text[start:end]``, estimated from both ends when it is long."""
    span = end - start
    if span <= _COUNT_SPAN:
        return float(text.count(sub, start, end))
    half = _COUNT_SPAN // 2
    sampled = text.count(sub, start, start + half) + text.count(sub, end - half, end)
    return sampled * span / _COUNT_SPAN


def _words(text: str, start: int, end: int) -> float:
    """Whitespace-separated pieces in ``text[start:end]``, roughly, without copying it."""
    return _count(text, " ", start, end) + _count(text, "\n", start, end) + 1


def _number(token: str) -> float:
    token = token.replace(",", "")
    if token.isdigit():
        return float(token)
    return float(_NUMBER_WORDS.get(token, 1))


def _largest(pattern: re.Pattern[str], text: str) -> float:
    best = 0.0
    for m in pattern.finditer(text):
        best = max(best, _number(m.group(1)))
    return math.log1p(min(best, 1e5))


def prompt_cues(prompt: str, max_chars: int = 600) -> npt.NDArray[np.float64]:
    """The cue vector of one prompt, in ``FEATURE_NAMES`` order.

    Sizes are measured on the whole prompt; the cues only look at its head and tail
    (``max_chars`` in all, where instructions sit), which bounds the cost.
    """
    # Positions instead of slices: a prompt can be a whole document, and copying it (strip,
    # partition, split) would cost more than everything else here together.
    start, end = _strip_bounds(prompt)
    # AlpacaEval-style "instruction\n\ninput": the instruction says what to do, the input how much
    # material there is (a rewrite's answer is as long as its input).
    # Searched within the first ``_COUNT_SPAN`` characters: an instruction is not longer.
    sep = prompt.find("\n\n", start, min(end, start + _COUNT_SPAN))
    head_end = sep if sep >= 0 else end
    # Material pasted after the first line (a song to rewrite, an email to classify).
    newline = prompt.find("\n", start, min(end, start + _COUNT_SPAN))
    has_material = 0 <= newline < end - 1
    log_material = math.log1p(_words(prompt, newline + 1, end)) if has_material else 0.0
    out: list[float] = [
        math.log1p(end - start),
        math.log1p(_words(prompt, start, end)),
        math.log1p(_words(prompt, start, head_end)),
        math.log1p(_words(prompt, sep + 2, end)) if sep >= 0 else 0.0,
        1.0 if sep >= 0 and _NON_SPACE.search(prompt, sep + 2, end) else 0.0,
        math.log1p(_count(prompt, "\n", start, end)),
        math.log1p(_count(prompt, "?", start, end)),
        1.0 if end > start and prompt[end - 1] == "?" else 0.0,
    ]
    if end - start > max_chars:
        tail = max_chars // 4
        text = prompt[start : start + max_chars - tail] + "\n" + prompt[end - tail : end]
    else:
        text = prompt[start:end]
    lower = text.lower()
    head = lower.partition("\n\n")[0]
    # Each size pattern only runs when its noun is there: most prompts name no size at all.
    out.extend(
        _largest(pattern, lower) if noun in lower else 0.0
        for pattern, noun in (
            (_RE_WORDS, "word"),
            (_RE_SENTENCES, "sentence"),
            (_RE_PARAGRAPHS, "paragraph"),
        )
    )
    out.append(_largest(_RE_ITEMS, lower) if _HAS_COUNT.search(lower) else 0.0)
    out.extend(_cue_values(lower))
    # The same cues in the instruction's first sentence only: "write" there is the task, while
    # "write" inside a pasted input is material.
    first = _FIRST_SENTENCE.split(head, maxsplit=1)[0]
    out.extend(_cue_values(first))
    cue = dict(zip(FEATURE_NAMES, out, strict=False))
    out.extend(
        (
            log_material,
            cue["cue_edit"] * log_material,
            cue["head_edit"] * log_material,
            cue["cue_classify"] * cue["log_words"],
            cue["head_write_long"] * cue["head_long_form"],
            cue["cue_fact_question"] * (cue["log_words"] < 3.0),
            cue["head_explain"] * cue["cue_detail"],
        )
    )
    return np.asarray(out, dtype=np.float64)


def prompt_cue_matrix(
    prompts: list[str] | tuple[str, ...], max_chars: int = 600
) -> npt.NDArray[np.float64]:
    """Cue vectors of many prompts, one row each."""
    if not prompts:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.vstack([prompt_cues(p, max_chars) for p in prompts])


def clip_text(text: str, max_chars: int) -> str:
    """Head and tail of a long prompt: instructions sit at either end, the middle is material.

    Lone surrogates (``"\\ud800"`` is valid JSON) become ``?``: the hashing vectorizer encodes
    the text as UTF-8 and would raise on them.
    """
    if len(text) > max_chars:
        head = (max_chars * 2) // 3
        text = text[:head] + "\n" + text[-(max_chars - head) :]
    return text.encode("utf-8", "replace").decode("utf-8")


def prompt_fold(prompt: str, n_folds: int) -> int:
    """A prompt's fold of ``n_folds``, by its content: the same in every fit."""
    digest = hashlib.sha256(prompt.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") % n_folds
