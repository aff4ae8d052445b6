"""From answer tokens to character spans of the decoded answer (and back), for any tokenizer.

A word's rows are the rows of the tokens whose spans overlap it, so every later word depends
on each token's span being exact. Prefix decoding gives it, with one trap: a character that
falls back to raw bytes (an emoji, a rare symbol) spans several tokens, and a prefix that
stops inside it decodes its leading bytes to U+FFFD, one per byte, which would push every later
span to the right. Only the part of a prefix that agrees with the whole text is settled; the
leading-byte tokens share the span of the character they complete.
"""

from __future__ import annotations

Span = tuple[int, int]  # [start, end) character offsets in the answer text
REPLACEMENT = "\ufffd"


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def decode_with_spans(tokenizer, ids: list[int]) -> tuple[str, list[Span]]:
    """Answer text and each token's character span in it."""
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    spans: list[Span] = []
    partial: list[bool] = []  # the token ends inside a multi-byte character
    previous = 0
    for i in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:i], clean_up_tokenization_spaces=False)
        settled = max(_common_prefix_length(prefix, text), previous)
        spans.append((previous, settled))
        partial.append(settled < len(prefix) and prefix.endswith(REPLACEMENT))
        previous = settled
    for k in range(len(spans) - 2, -1, -1):
        if partial[k] and spans[k][0] == spans[k][1] == spans[k + 1][0]:
            spans[k] = spans[k + 1]  # leading bytes belong to the character they complete
    return text, spans


def tokens_of(span: Span, token_spans: list[Span]) -> list[int]:
    """Indices of the tokens that overlap a character span."""
    return [k for k, (s, e) in enumerate(token_spans) if s < span[1] and e > span[0]]
