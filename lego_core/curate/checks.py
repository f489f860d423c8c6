"""Checks on an LLM's answer before it is accepted: empty, refusal, too short/long, off the action.

`check_response` returns (cleaned text, None) when the answer is accepted and (text, reason) when
it is not; the reasons are short fixed strings so rejects can be counted across a dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EMPTY = "empty response"
REFUSAL = "refusal"
TOO_SHORT = "too short"
TOO_LONG = "too long"
TRUNCATED = "truncated (finish_reason=length)"
FILTERED = "content filtered"
OFF_TOPIC = "not about the action"

_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:'|no)t|i cannot|i'?m (?:not able|unable)|"
    r"i am (?:not able|unable)|i won'?t|as an ai\b|as a language model)",
    re.IGNORECASE,
)
_PREAMBLE = re.compile(r"^\s*(?:description|answer|detailed description)\s*:\s*", re.IGNORECASE)
_STOP = {"the", "a", "an", "of", "to", "in", "on", "into", "onto", "from", "with", "up", "down", "off",
         "out", "and", "or", "at", "for", "by", "over", "under", "some", "it", "its", "something", "c"}
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class CheckConfig:
    min_words: int = 8
    max_words: int = 150
    on_topic: bool = True          # the answer must mention a word of the label (or its stem)


def clean(text: str) -> str:
    """One paragraph: whitespace collapsed, wrapping quotes and a 'Description:' preamble removed."""
    text = " ".join((text or "").split())
    text = _PREAMBLE.sub("", text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "ed", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def label_words(label: str) -> list[str]:
    """The label's content words, e.g. "pick up cup" -> ["pick", "cup"]."""
    return [w for w in _WORD.findall(label.lower()) if w not in _STOP and len(w) >= 2]


def about_action(text: str, label: str) -> bool:
    """Whether ``text`` mentions at least one content word of ``label`` (or its stem)."""
    words = label_words(label)
    if not words:
        return True
    tokens = _WORD.findall(text.lower())
    stems = {_stem(t) for t in tokens}
    joined = " ".join(tokens)
    for w in words:
        if w in tokens or _stem(w) in stems or (len(w) >= 4 and _stem(w) in joined):
            return True
    return False


def check_response(text: str | None, label: str, cfg: CheckConfig = CheckConfig(), *,
                   finish_reason: str | None = None, refusal: str | None = None) -> tuple[str, str | None]:
    """(cleaned text, None) if accepted, else (cleaned text, reason)."""
    if refusal:
        return clean(refusal), REFUSAL
    if finish_reason == "content_filter":
        return clean(text or ""), FILTERED
    text = clean(text or "")
    if not text:
        return text, EMPTY
    if _REFUSAL.match(text):
        return text, REFUSAL
    if finish_reason == "length":
        return text, TRUNCATED
    n = len(text.split())
    if n < cfg.min_words:
        return text, TOO_SHORT
    if n > cfg.max_words:
        return text, TOO_LONG
    if cfg.on_topic and not about_action(text, label):
        return text, OFF_TOPIC
    return text, None
