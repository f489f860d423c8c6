"""Tiny tokenizers built offline: a real CLIP BPE tokenizer and a Llama-style tokenizer for LLaVA.

No vocabulary can be downloaded here, so both are *trained in code* (`train_bpe`, a small
deterministic BPE trainer; words split by the real pre-tokenisers) on a small built-in English
corpus of kitchen actions (`corpus()`), then wrapped in the transformers class that production
code loads (`CLIPTokenizer`, `LlamaTokenizer`).

Both are byte-complete, so no text ever maps to unk:

- CLIP: byte-level BPE exactly like OpenAI CLIP's layout — ids 0..255 the 256 byte symbols,
  256..511 the same with the `</w>` end-of-word suffix, then the merge results, then
  `<|startoftext|>` and `<|endoftext|>` last (so `argmax(input_ids)` finds the eos, as
  `CLIPTextModel`'s pooling assumes).
- Llama: SentencePiece-style BPE (`▁` word prefix) with byte fallback — `<unk>`, `<s>`, `</s>`,
  then `<0x00>`..`<0xFF>`, printable ASCII, merge results; `<pad>` and `<image>` are added special
  tokens at the end, like llava-1.5-hf.

Why build the vocab/merges ourselves instead of saving the trained `tokenizers.Tokenizer`: in
transformers 5.x, classes with their own `__init__` (CLIPTokenizer, LlamaTokenizer) rebuild their
pipeline from `vocab` + `merges` when loading `tokenizer.json`, so only a vocab/merges pair that
fits the class's own normaliser / pre-tokeniser round-trips faithfully. (Also: the 5.x
`CLIPTokenizer(vocab_file=..., merges_file=...)` silently ignores the files; pass `vocab=`/`merges=`.)

Training is deterministic (same corpus → same merges) and cached per process.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

CLIP_MAX_LENGTH = 77
IMAGE_TOKEN = "<image>"

# ----------------------------------------------------------------------------------------------
# Built-in corpus
# ----------------------------------------------------------------------------------------------

# base, 3rd person, -ing, past
_VERBS = """
cut cuts cutting cut|chop chops chopping chopped|slice slices slicing sliced|peel peels peeling peeled
wash washes washing washed|rinse rinses rinsing rinsed|dry dries drying dried|wipe wipes wiping wiped
open opens opening opened|close closes closing closed|take takes taking took|put puts putting put
pick picks picking picked|place places placing placed|pour pours pouring poured|stir stirs stirring stirred
mix mixes mixing mixed|fry fries frying fried|boil boils boiling boiled|grate grates grating grated
turn turns turning turned|hold holds holding held|move moves moving moved|lift lifts lifting lifted
press presses pressing pressed|push pushes pushing pushed|pull pulls pulling pulled|fill fills filling filled
empty empties emptying emptied|shake shakes shaking shook|squeeze squeezes squeezing squeezed
throw throws throwing threw|scoop scoops scooping scooped|spread spreads spreading spread
crack cracks cracking cracked|break breaks breaking broke|fold folds folding folded|roll rolls rolling rolled
knead kneads kneading kneaded|season seasons seasoning seasoned|sprinkle sprinkles sprinkling sprinkled
check checks checking checked|look looks looking looked|insert inserts inserting inserted
remove removes removing removed|adjust adjusts adjusting adjusted|flip flips flipping flipped
scrape scrapes scraping scraped|serve serves serving served|eat eats eating ate|drink drinks drinking drank
cook cooks cooking cooked|heat heats heating heated|measure measures measuring measured
tear tears tearing tore|unwrap unwraps unwrapping unwrapped|wrap wraps wrapping wrapped
screw screws screwing screwed|fix fixes fixing fixed|paint paints painting painted|sand sands sanding sanded
plant plants planting planted|water waters watering watered|dig digs digging dug|sweep sweeps sweeping swept
""".replace("\n", "|").split("|")

_NOUNS = """
onion knife tomato potato carrot pepper garlic lettuce cucumber cheese bread butter egg milk water
pan pot lid plate bowl cup mug glass spoon fork spatula ladle whisk board chopping-board cutting-board
cupboard drawer fridge freezer oven microwave kettle tap sink sponge towel cloth bottle jar can bag box
rice pasta noodles flour sugar salt oil sauce dough meat chicken fish sausage bacon mushroom lemon apple
banana orange peach grapes herbs spices coffee tea teabag filter paper foil tray rack counter table
hob stove burner switch handle door shelf container packet wrapper peeler grater colander sieve scale
screw screwdriver hammer nail brush paint wood plank drill plant soil pot-plant shovel broom dustpan
""".split()

_PLACES = """
the counter|the chopping board|the sink|the stove|the table|the shelf|the fridge|the plate|the bowl
the pan|the pot|the tray|the drawer|the cupboard|the floor|the bin|the dish rack|the workbench
""".replace("\n", "|").split("|")

_TEXTS = """
What is the person doing in this image?
What action is the person about to perform?
Describe the action the camera wearer will do next.
How will the hands interact with the objects in the scene?
Given the action, describe what the person is doing in detail.
The person is going to {label}. Describe what happens next.
Describe how the person will {label} in this egocentric view.
What will the scene look like when the person does the action?
Explain the action in detail, including the hands and the objects.
Describe the hand pose and the objects involved in the action.
A chat between a curious human and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the human's questions.
USER: ASSISTANT: SYSTEM:
An egocentric frame from a head-mounted camera, seen from the first-person view.
The left hand is on the left of the image and the right hand is on the right.
There is a box around the hand and another box around the object.
The image shows a kitchen with a counter, a sink, a window and several cupboards.
In the background there are plates, bowls and a few bottles of oil and sauce.
The light is bright and the colours are warm; the surface is clean and white.
Numbers like 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 25, 100 and 2024 appear in text.
It's a small room; they're busy, we've done it, I'm here, you'll see, he'd go.
Yes. No. Maybe! Why? Because: (a) first; (b) second - third "quoted" [x] {y} <z> & more / less.
a photo of a hand, a photo of a person cooking, an image of a kitchen, a picture of a workshop
first then next after before while during slowly quickly carefully gently firmly with both hands
up down left right top bottom front back inside outside over under above below near far into onto
""".strip().splitlines()

_TEMPLATES = [
    "{Who} {v3} the {n}.",
    "{Who} is {ving} the {n} with {their} {hand} hand.",
    "{Who} {v3} the {n} on {place} using the {n2}.",
    "{Who} {vpast} the {n} and then {vpast2} the {n2}.",
    "{verb} {n}",
    "{verb} the {n} in {place}",
    "The {hand} hand is holding the {n} while the {hand2} hand {v3} the {n2}.",
    "In the image, {who} is about to {verb} the {n} near {place}.",
    "The camera wearer {v3} the {n} from {place} and puts it on {place2}.",
    "With the {n2} in {their} {hand} hand, {who} carefully {v3} the {n}.",
]
_WHO = ["the person", "a person", "the camera wearer", "he", "she", "the man", "the woman", "someone"]


def _verb_forms():
    return [tuple(v.split()) for v in _VERBS if v.strip()]


def _places():
    return [p.strip() for p in _PLACES if p.strip()]


def corpus(n_sentences: int = 3000, seed: int = 0) -> list[str]:
    """A small English corpus of kitchen/DIY action sentences (plus prompt and question text).

    Deterministic: sentences are drawn with `random.Random(seed)`. Used to train both tokenizers so
    that ordinary action descriptions tokenise into a few real sub-words each.
    """
    rng = random.Random(seed)
    verbs = _verb_forms()
    nouns = [n.replace("-", " ") for n in _NOUNS]
    places = _places()
    lines = list(_TEXTS)
    for base, v3, ving, vpast in verbs:
        lines.append(f"{base} {v3} {ving} {vpast} {base.capitalize()} {ving.capitalize()}")
    for _ in range(n_sentences):
        (base, v3, ving, vpast), (_, _, _, vpast2) = rng.choice(verbs), rng.choice(verbs)
        who = rng.choice(_WHO)
        s = rng.choice(_TEMPLATES).format(
            who=who, Who=who[0].upper() + who[1:], verb=base, v3=v3, ving=ving, vpast=vpast,
            vpast2=vpast2, n=rng.choice(nouns), n2=rng.choice(nouns), place=rng.choice(places),
            place2=rng.choice(places), hand=rng.choice(["left", "right"]),
            hand2=rng.choice(["left", "right"]), their=rng.choice(["their", "his", "her"]),
        )
        lines.append(s.replace("{label}", f"{base} {rng.choice(nouns)}"))
    return [line.replace("{label}", "cut onion") for line in lines]


# ----------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------


def train_bpe(words: dict[tuple[str, ...], int], n_merges: int, min_count: int = 2) -> list[tuple[str, str]]:
    """Learn up to `n_merges` BPE merges from `words` (symbol tuple → count).

    A small pure-Python trainer instead of `tokenizers.trainers.BpeTrainer`, because that one
    breaks ties between equally frequent pairs differently from run to run (seen: 1 run in 4 gave
    other merges), and the kit must be deterministic. Ties go to the lexicographically smallest pair.
    """
    from collections import Counter, defaultdict

    seqs = [list(w) for w in words]
    counts = list(words.values())
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, (seq, c) in enumerate(zip(seqs, counts)):
        for pair in zip(seq, seq[1:]):
            pairs[pair] += c
            where[pair].add(i)
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges and pairs:
        best, best_count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if best_count < min_count:
            break
        merges.append(best)
        a, b = best
        for i in sorted(where.pop(best)):
            seq, c = seqs[i], counts[i]
            for pair in zip(seq, seq[1:]):
                pairs[pair] -= c
                if pairs[pair] <= 0:
                    del pairs[pair]
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for pair in zip(out, out[1:]):
                pairs[pair] += c
                where[pair].add(i)
    return merges


def _word_counts(pre_tokenize, end_suffix: str = "") -> dict[tuple[str, ...], int]:
    """Corpus words (as the tokenizer's own pre-tokeniser splits them) → symbol tuples → counts."""
    from collections import Counter

    words: Counter = Counter()
    for line in corpus():
        for word, _ in pre_tokenize(line):
            symbols = list(word)
            symbols[-1] += end_suffix
            words[tuple(symbols)] += 1
    return dict(sorted(words.items()))


@functools.lru_cache(maxsize=4)
def _clip_vocab_merges(vocab_size: int) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP-style byte-level BPE vocab/merges, laid out like OpenAI CLIP's vocab."""
    from transformers import CLIPTokenizer

    if vocab_size < 600:
        raise ValueError(f"CLIP vocab_size {vocab_size} < 600: 514 ids go to bytes and specials alone")
    # CLIPTokenizer's own normaliser + pre-tokeniser split the corpus exactly as the loaded
    # tokenizer will split text.
    backend = CLIPTokenizer().backend_tokenizer
    words = _word_counts(
        lambda text: backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)), "</w>"
    )
    byte_symbols = [chr(c) for c in _bytes_to_unicode_order()]
    vocab: dict[str, int] = {}
    for sym in byte_symbols + [sym + "</w>" for sym in byte_symbols]:
        vocab[sym] = len(vocab)
    merges = train_bpe(words, vocab_size - len(vocab) - 2)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, tuple(merges)


def _bytes_to_unicode_order() -> list[int]:
    """Code points of GPT-2/CLIP's byte→unicode table, in CLIP's vocab order (bytes 0..255 mapped)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return [ord(c) for c in bytes_to_unicode().values()]


def make_clip_tokenizer(folder: str | Path | None = None, *, vocab_size: int = 1000):
    """A real CLIP BPE tokenizer (`CLIPTokenizer`), `vocab_size` tokens, max length 77.

    bos `<|startoftext|>`, eos = pad = unk = `<|endoftext|>` (as in SD-1.5's tokenizer). If `folder`
    is given, it is saved there and reloaded with `CLIPTokenizer.from_pretrained(folder)`, so the
    returned object is exactly what production code will see.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_merges(vocab_size)
    tok = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=CLIP_MAX_LENGTH)
    if folder is None:
        return tok
    folder = Path(folder)
    tok.save_pretrained(folder)
    write_clip_vocab_files(folder, tok)
    return CLIPTokenizer.from_pretrained(folder)


def write_clip_vocab_files(folder: str | Path, tokenizer) -> None:
    """Add `vocab.json` + `merges.txt` (from `tokenizer`) beside `tokenizer.json`, as SD-1.5 has.

    transformers 5.x saves only `tokenizer.json`; SD-1.5 ships only vocab.json/merges.txt. Writing
    both makes the folder loadable either way (and by transformers 4.x's slow CLIPTokenizer).
    """
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    folder = Path(folder)
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Llama (for LLaVA)
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _llama_vocab_merges(vocab_size: int) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """SentencePiece-style (`▁`-prefixed words) BPE vocab/merges, laid out like Llama's vocab."""
    from tokenizers import pre_tokenizers

    if vocab_size < 450:
        raise ValueError(f"Llama vocab_size {vocab_size} < 450: 354 ids go to bytes, ASCII and specials alone")
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    words = _word_counts(metaspace.pre_tokenize_str)
    ascii_chars = [chr(c) for c in range(33, 127)] + ["▁"]
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in ascii_chars:
        vocab[c] = len(vocab)
    # The corpus is ASCII, so every merge is built from symbols already in the vocab.
    merges = train_bpe(words, vocab_size - len(vocab))
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return vocab, tuple(merges)


def make_llama_tokenizer(folder: str | Path | None = None, *, vocab_size: int = 1000):
    """A Llama-style BPE tokenizer (`LlamaTokenizer`, byte fallback: never unk) for tiny LLaVA models.

    Specials: `<unk>`=0, `<s>`=1 (bos, prepended), `</s>`=2 (eos), then `<pad>` and `<image>` as added
    special tokens at the end (ids `vocab_size` and `vocab_size + 1`; `len(tok) == vocab_size + 2`).
    `<image>` is registered as `tok.image_token` so `LlavaProcessor` finds it. Padding side is
    left, as batched generation needs. Saved and reloaded through `AutoTokenizer` if `folder`.
    """
    from transformers import AutoTokenizer, LlamaTokenizer

    vocab, merges = _llama_vocab_merges(vocab_size)
    tok = LlamaTokenizer(
        vocab=dict(vocab), merges=list(merges), pad_token="<pad>", padding_side="left", add_bos_token=True,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    if folder is None:
        return tok
    folder = Path(folder)
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
