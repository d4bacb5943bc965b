"""Hand-written cues in a prompt that say how long a good answer is.

A model answering "Classify the tweet as positive or negative" writes a word; one asked to "write a
detailed business plan" writes a thousand. With a few hundred training prompts a learner cannot
discover those verbs' meaning from n-grams alone, so the cues name them. Each cue is cheap (one
precompiled regular expression), so a request's features cost tens of microseconds.
"""

from __future__ import annotations

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

_CUES: Final[tuple[tuple[str, re.Pattern[str]], ...]] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        # Short answers: labels, single facts, edits of a given text.
        (
            "classify",
            r"\b(classify|categori[sz]e|category|categories|label|sentiment|identify|decide|"
            r"determine whether|indicate|true or false|yes or no|which of|is it|genre|"
            r"part of speech|offensive)\b",
        ),
        (
            "edit",
            r"\b(rewrite|re-write|paraphrase|rephrase|correct|fix the|proofread|capitali[sz]e|"
            r"convert|translate|change the|replace|shorten|simplify|make it)\b",
        ),
        ("extract", r"\b(extract|retrieve|find the|pick|select|choose|name the)\b"),
        ("given", r"\b(given|following|below|this text|the text|the sentence|the tweet)\b"),
        (
            "brief",
            r"\b(brief(ly)?|short|concise(ly)?|one word|single word|in a word|one sentence"
            r"|one line|tl;?dr|quick(ly)?|just (the|answer|give|say|tell)|only (answer|"
            r"respond|reply|output|return|give))\b",
        ),
        (
            "fact_question",
            r"^(what|who|when|where|which|how many|how much|is|are|was|were|does|"
            r"do|did|can|could)\b",
        ),
        ("title", r"\b(title|headline|slogan|tagline|name for|hashtags?|emojis?|tweet)\b"),
        # Long answers: open generation, plans, code, explanations.
        (
            "write_long",
            r"\b(write|compose|draft|create|generate|design|develop|produce|prepare|outline)\b",
        ),
        (
            "long_form",
            r"\b(essay|story|stories|article|blog|post|report|script|speech|novel|chapter|"
            r"whitepaper|paper|plan|proposal|guide|tutorial|lesson|syllabus|curriculum|course|"
            r"itinerary|interview|dialog(ue)?|screenplay|letter|cover letter|review|analysis|"
            r"campaign|strategy|documentation|manual|book|presentation|outline|rubric)\b",
        ),
        ("poem", r"\b(poem|song|lyrics|rap|haiku|limerick|sonnet|verse|joke)\b"),
        (
            "detail",
            r"\b(detailed|in detail|comprehensive|thorough(ly)?|in-depth|step[- ]by[- ]step|"
            r"elaborate|extensive|complete|full|long|lengthy|at least)\b",
        ),
        (
            "explain",
            r"\b(explain|describe|discuss|elaborate|compare|contrast|analy[sz]e|why|how (do|does|"
            r"can|to|should|would)|what are|pros and cons|advantages|difference)\b",
        ),
        ("list", r"\b(list|steps|ways|ideas|tips|examples|suggestions|recommend\w*|options)\b"),
        (
            "code",
            r"(```|\bcode\b|\bpython\b|\bjavascript\b|\btypescript\b|\bjava\b|\bc\+\+|\bc#|"
            r"\bsql\b|\bhtml\b|\bcss\b|\bbash\b|\bscript\b|\bfunction\b|\bclass\b|\bprogram\b|"
            r"\bimplement|\balgorithm\b|\bapi\b|\bregex\b|\bgame\b|\bapp\b|\bdef |\breturn\b|"
            r"[{};]\s*$)",
        ),
        ("math", r"(\d\s*[-+*/^=]\s*\d|\bcalculate\b|\bsolve\b|\bequation\b|\bprove\b|\bmath)"),
        ("roleplay", r"\b(act as|act like|pretend|you are a|imagine you|role ?play)\b"),
        ("greeting", r"^(hi|hello|hey|thanks|thank you|good (morning|evening))\b"),
    )
)

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
    *(f"cue_{name}" for name, _ in _CUES),
    *(f"head_{name}" for name, _ in _CUES),
)


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


def prompt_cues(prompt: str, max_chars: int = 1200) -> npt.NDArray[np.float64]:
    """The cue vector of one prompt, in ``FEATURE_NAMES`` order.

    Sizes are measured on the whole prompt; the patterns only look at its first ``max_chars``
    characters and its last few hundred (where instructions sit), which bounds the cost.
    """
    text = prompt.strip()
    # AlpacaEval-style "instruction\n\ninput": the instruction says what to do, the input how much
    # material there is (a rewrite's answer is as long as its input).
    head, sep, tail = text.partition("\n\n")
    out: list[float] = [
        math.log1p(len(text)),
        math.log1p(text.count(" ") + text.count("\n") + 1),
        math.log1p(len(head.split())),
        math.log1p(tail.count(" ") + tail.count("\n") + 1) if sep else 0.0,
        1.0 if sep and tail.strip() else 0.0,
        math.log1p(text.count("\n")),
        math.log1p(text.count("?")),
        1.0 if text.endswith("?") else 0.0,
    ]
    if len(text) > max_chars:
        text = text[: max_chars - max_chars // 4] + "\n" + text[-(max_chars // 4) :]
    lower = text.lower()
    head = lower.partition("\n\n")[0]
    out.extend(
        _largest(pattern, lower)
        for pattern in (_RE_WORDS, _RE_SENTENCES, _RE_PARAGRAPHS, _RE_ITEMS)
    )
    out.extend(1.0 if pattern.search(lower) else 0.0 for _, pattern in _CUES)
    # The same cues in the instruction's first sentence only: "write" there is the task, while
    # "write" inside a pasted input is material.
    first = re.split(r"(?<=[.!?:])\s|\n", head, maxsplit=1)[0]
    out.extend(1.0 if pattern.search(first) else 0.0 for _, pattern in _CUES)
    return np.asarray(out, dtype=np.float64)


def prompt_cue_matrix(
    prompts: list[str] | tuple[str, ...], max_chars: int = 1200
) -> npt.NDArray[np.float64]:
    """Cue vectors of many prompts, one row each."""
    if not prompts:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.vstack([prompt_cues(p, max_chars) for p in prompts])
