"""Reading LLaVA's answers: where the foreground, object and background words are.

Everything works on character spans of the answer text; the running teacher (teacher.model) maps
spans to answer tokens. Parsers tolerate what LLaVA writes in practice: single, double or no
quotes, missing braces, lists instead of strings, prose before or after the dict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Span = tuple[int, int]  # [start, end) character offsets in the answer text

# Letters and digits of any script ("café"), joined by ASCII or typographic apostrophes and
# hyphens ("dog's", "dog’s", "go-kart"): one word each, never pieces.
WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
# key, then : or =, then any opening quotes/brackets/braces
_FG_KEY = re.compile(r"""fore[\s_-]?ground\W*?[:=]\s*[\[{('"\s]*""", re.IGNORECASE)
_BG_KEY = re.compile(r"""back[\s_-]?ground\W*?[:=]\s*[\[{('"\s]*""", re.IGNORECASE)
_DENSE_BG = re.compile(r"background\s+(?:is|are|:)\s*", re.IGNORECASE)
_VALUE_END = re.compile(r"""['"}\]\n]|,\s*['"]?\w+['"]?\s*:""")
# A background value may be a list ('grass', 'sky'): it ends at a brace, bracket or newline, or a
# quote that closes the whole value (followed by a brace, a full stop or the end).
_LIST_END = re.compile(r"""[}\]\n]|['"]\s*(?:[}.]|$)""")
# Joining words in a background list are not background concepts.
STOPWORDS = frozenset(["a", "an", "and", "or", "the", "of", "with", "in", "on", "at", "some"])


@dataclass
class ParsedAnswer:
    """Character spans of the words that make each map; empty lists when absent."""

    foreground: list[Span] = field(default_factory=list)  # one span per foreground/object word
    background: list[Span] = field(default_factory=list)  # one span per background word
    foreground_text: str | None = None  # the parsed foreground value (None: not found)
    objects_found: list[str] = field(default_factory=list)  # dense: target names present


def normalize(name: str) -> str:
    """'Golden-Retriever.' -> 'golden retriever', 'Café' -> 'café' (how names are compared)."""
    return " ".join(re.findall(r"[^\W_]+", name.lower()))


def word_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Spans of the words in text[start:end]; punctuation and whitespace are never words."""
    end = len(text) if end is None else end
    return [(m.start() + start, m.end() + start) for m in WORD.finditer(text[start:end])]


def content_words(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    return [(a, b) for a, b in word_spans(text, start, end) if text[a:b].lower() not in STOPWORDS]


def _value_span(
    text: str, key: re.Pattern[str], value_end: re.Pattern[str] = _VALUE_END
) -> Span | None:
    """Span of the value after `key` up to its closing quote/brace (or the text's end)."""
    match = key.search(text)
    if match is None:
        return None
    start = match.end()
    stop = value_end.search(text, start)
    end = stop.start() if stop else len(text)
    return start, end


def _trim(text: str, span: Span) -> Span | None:
    """The span shrunk to its first..last word (None when it holds no word)."""
    words = word_spans(text, *span)
    return (words[0][0], words[-1][1]) if words else None


def parse_dict_answer(text: str, expected_foreground: str | None = None) -> ParsedAnswer:
    """Prompt 1: {'foreground': 'X', 'background': 'a, b'} -> X as one span, a and b as words.

    When the value starts with `expected_foreground` (the label's class name), that whole name
    is the span, so names with quotes or commas ("potter's wheel") stay whole.
    """
    parsed = ParsedAnswer()
    key = _FG_KEY.search(text)
    fg = _value_span(text, _FG_KEY)
    if key and expected_foreground:
        name = expected_foreground.strip()
        if text[key.end() : key.end() + len(name)].lower() == name.lower():
            fg = (key.end(), key.end() + len(name))
    fg = _trim(text, fg) if fg else None
    if fg is not None:
        parsed.foreground = [fg]  # a class name is one word even when it has several parts
        parsed.foreground_text = text[fg[0] : fg[1]]
    bg = _value_span(text[fg[1] :], _BG_KEY, _LIST_END) if fg else None
    bg = (bg[0] + fg[1], bg[1] + fg[1]) if bg and fg else _value_span(text, _BG_KEY, _LIST_END)
    if bg is not None:
        parsed.background = content_words(text, *bg)
    return parsed


def parse_phrase_answer(text: str) -> ParsedAnswer:
    """Prompt 2: the whole answer is the object (one span over its words)."""
    span = _trim(text, (0, len(text)))
    if span is None:
        return ParsedAnswer()
    return ParsedAnswer(foreground=[span], foreground_text=text[span[0] : span[1]])


def parse_description_answer(text: str) -> ParsedAnswer:
    """Prompt 3: every word of the description counts (their maps are averaged)."""
    words = word_spans(text)
    return ParsedAnswer(foreground=words, foreground_text=text.strip() or None)


def parse_dense_answer(text: str, targets: list[str]) -> ParsedAnswer:
    """Dense: one span per target class named in the answer, background words after 'is'."""
    parsed = ParsedAnswer()
    bg_match = _DENSE_BG.search(text)
    objects_end = bg_match.start() if bg_match else len(text)
    for name in targets:
        words = r"\W+".join(re.escape(part) for part in name.split())
        # Plural "s"/"es" allowed: "there are dogs".
        found = re.search(rf"\b{words}(?:e?s)?\b", text[:objects_end], re.IGNORECASE)
        if found:
            parsed.foreground.append(found.span())
            parsed.objects_found.append(name)
    if bg_match is not None:
        end = text.find(".", bg_match.end())
        parsed.background = content_words(text, bg_match.end(), end if end >= 0 else len(text))
    parsed.foreground_text = ", ".join(parsed.objects_found) or None
    return parsed


def parse_answer(
    answer_format: str, text: str, class_name: str, objects: list[str]
) -> ParsedAnswer:
    """The parser of the template's answer format (dict, phrase, description, dense)."""
    if answer_format == "dict":
        return parse_dict_answer(text, expected_foreground=class_name)
    if answer_format == "phrase":
        return parse_phrase_answer(text)
    if answer_format == "description":
        return parse_description_answer(text)
    return parse_dense_answer(text, objects)


def foreground_correct(
    answer_format: str, forced: bool, parsed: ParsedAnswer, text: str, class_name: str,
    objects: list[str],
) -> int:  # fmt: skip
    """1 when the model named the right foreground (dense: exactly the objects present), 0 when
    not, -1 when unknown: a forced answer's foreground was written for the model."""
    if forced:
        return -1
    if answer_format == "dense":
        return int(set(parsed.objects_found) == set(objects))
    if answer_format == "description":
        return int(normalize(class_name) in normalize(text))
    return int(normalize(parsed.foreground_text or "") == normalize(class_name))
