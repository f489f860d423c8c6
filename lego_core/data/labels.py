"""Action-label cleaning shared by extraction and the VLLM question templates.

Ego4D narrations read "#C C cuts the onion": a tag, the camera wearer as subject, a third-person
verb and articles. The paper's labels are "cut onion": verb lemma + object, articles dropped.
The authors' VLLM was asked about the narration less cleaned: "cut the onion" (verb lemma, the rest
as narrated): `authors_ego4d_action`.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"^\s*#\s*[a-z]+\s+", re.IGNORECASE)          # "#C ", "#O "
_SUBJECT = re.compile(r"^(c|the camera wearer)\s+", re.IGNORECASE)
_DROP = {"the", "a", "an"}
_ES_AFTER = ("ss", "sh", "ch", "x", "z", "o")
# Irregular third-person forms the spelling rules get wrong, with WordNet's lemmas (the authors').
_WORDNET_IRREGULAR = {"has": "have", "is": "be"}


def lemmatize_verb(word: str) -> str:
    """Third-person singular to base form by English spelling rules ("carries" -> "carry").

    Also mends the "verb_s" forms of Ego4D's templated narrations ("turn_ons" -> "turn_on").
    """
    w = word.lower()
    if len(w) <= 3 or not w.endswith("s") or w.endswith("ss"):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("es") and w[:-2].endswith(_ES_AFTER):
        return w[:-2]
    return w[:-1]


def verb_from_structured(structured_verb: str | None) -> str:
    """Ego4D's taxonomy verb "turn_on_(something)" -> "turn on"; "" when absent."""
    if not structured_verb:
        return ""
    base = re.sub(r"_?\(.*\)$", "", structured_verb.strip())
    return base.replace("_", " ").strip().lower()


def clean_narration(text: str, structured_verb: str | None = None) -> str:
    """"#C C cuts the onion" -> "cut onion".

    The first word is the verb; when the taxonomy verb is known and the narration's verb is an
    inflection of it ("turn_ons" of "turn_on"), the taxonomy spelling wins.
    """
    s = _TAG.sub("", text.strip())
    s = _SUBJECT.sub("", s)
    s = re.sub(r"[.!?,;:]+$", "", s).strip()
    words = s.split()
    if not words:
        return ""
    verb = lemmatize_verb(words[0])
    known = verb_from_structured(structured_verb).replace(" ", "_")
    if known and (words[0].lower().startswith(known) or verb == known):
        verb = known
    rest = [w.lower() for w in words[1:] if w.lower() not in _DROP]
    return " ".join([verb.replace("_", " "), *rest]).strip()


def authors_ego4d_action(narration: str) -> str:
    """"#C C cuts the onion" -> "cut the onion": the action as the authors' VLLM question has it.

    Their inference script (vllm/llava/eval/run_llava_in_loop.py) drops the first two characters
    ("#C") and the next two ("C "), lemmatises the first word as a verb (lower-cased) and keeps the
    rest of the narration as it is, articles included. Done here with the same string operations;
    the lemma comes from `lemmatize_verb` and `_WORDNET_IRREGULAR` (their NLTK WordNet lemmatiser needs
    a corpus download, which lego avoids; the two agree on regular third-person forms and the listed
    irregular ones).
    """
    action = str(narration)[2:].strip()          # remove "#C"
    action = action[2:].strip()                  # remove "C"
    verb, _, remain = action.partition(" ")
    verb = _WORDNET_IRREGULAR.get(verb.lower()) or lemmatize_verb(verb)
    return f"{verb} {remain}" if remain != "" else verb
