"""The questions the VLLM is asked: the authors' inference question, and ten tuning templates of
our own, each putting the action label into a question about how to do it in the pictured scene.

The paper drew one of its ten templates at random for every tuning step and used one fixed question
at inference. Both behaviours are here: `tuning_question(label, rng)` draws from
`QUESTION_TEMPLATES` with a caller-seeded `random.Random`; `inference_question(label)` asks
`INFERENCE_QUESTION`, the authors' released one (their README and `vllm/scripts/inference.sh`:
``--query "How does the person properly {} that is displayed in the video frame?"``), or another
template given as `question` (`--question` on enrich / generate / evaluate). The ten tuning
templates' wording is ours: the authors' were never released.

The label goes in as `action_text(label)`: Ego4D narrations ("#C C cuts the onion") are cleaned by
`lego_core.data.labels.clean_narration` (the same function extraction uses, so the cleaning lives in
one place); other labels ("cut onion", "open fridge") are only trimmed. A sample imported from the
authors' release (`lego import dataset`) carries `question_action` in its meta: the action exactly as
their question worded it ("cut the onion"; EPIC-KITCHENS' narration as it is), which goes in verbatim.
"""

from __future__ import annotations

import random
import re

from lego_core.errors import BadInput

QUESTION_TEMPLATES: tuple[str, ...] = (
    "How do I {action} in this scene? Describe the hands, the objects and the movement.",
    "What would it look like to {action} here? Describe the action in detail.",
    "Describe in detail how the person should {action} in this picture.",
    "I want to {action}. Looking at this scene, how should my hands do it?",
    "Explain step by step how to {action} with the objects in this image.",
    "In this first-person view, how would someone {action}? Describe the hands and objects involved.",
    "Given this scene, describe what doing the action \"{action}\" looks like.",
    "How should the camera wearer {action} here? Mention which hand does what.",
    "Picture the next moment: the person is about to {action}. Describe how it is done.",
    "What are the hand movements and object interactions needed to {action} in this scene?",
)

# The authors' inference question, word for word ("{}" in their script).
INFERENCE_QUESTION = "How does the person properly {action} that is displayed in the video frame?"

_TRAILING = re.compile(r"[\s.!?,;:]+$")


def action_text(label: str) -> str:
    """The action label as the questions use it: Ego4D narrations cleaned, others trimmed.

    "#C C cuts the onion" -> "cut onion" (shared Ego4D cleaning); "  Open fridge. " -> "open fridge"
    (whitespace collapsed, trailing punctuation dropped, first letter lower-cased). Raises `BadInput`
    for an empty label.
    """
    from lego_core.data.labels import clean_narration

    text = " ".join(str(label).split())
    if text.startswith("#"):
        text = clean_narration(text)
    text = _TRAILING.sub("", text)
    if not text:
        raise BadInput(f"empty action label {label!r}: say which action, e.g. \"cut onion\"")
    return text[0].lower() + text[1:] if not text[:2].isupper() else text


def fill(template: str, label: str) -> str:
    return template.format(action=action_text(label))


def question_template(question: str | None) -> str:
    """`question` (None: `INFERENCE_QUESTION`) checked to hold one place for the action, written
    "{action}" or, as in the authors' scripts, "{}"; returned in the "{action}" form."""
    if question is None:
        return INFERENCE_QUESTION
    template = question.replace("{}", "{action}")
    if not template.strip() or template.count("{action}") != 1:
        raise BadInput(f"--question {question!r}: put {{}} (or {{action}}) once where the action goes, e.g. "
                       f"{INFERENCE_QUESTION.replace('{action}', '{}')!r}")
    try:
        template.format(action="x")
    except (IndexError, KeyError, ValueError):
        raise BadInput(f"--question {question!r}: only {{}} or {{action}} may be in braces "
                       "(write {{ and }} for literal braces)") from None
    return template


def inference_question(label: str, question: str | None = None, *, action: str | None = None) -> str:
    """The inference question for `label`: `INFERENCE_QUESTION` (the authors'), or the template
    `question` (see `question_template`). `action`, when given, is put in verbatim instead of
    `action_text(label)`: the authors' wording of an imported sample (its meta's `question_action`)."""
    if action:
        return question_template(question).format(action=action)
    return fill(question_template(question), label)


def tuning_question(label: str, rng: random.Random | int) -> str:
    """A question for `label` from a template drawn uniformly with `rng` (a `random.Random`, or an
    int seed): the paper's tuning-time behaviour. The same seed gives the same sequence of draws."""
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    return fill(rng.choice(QUESTION_TEMPLATES), label)
