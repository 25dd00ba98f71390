"""Identities of the synthetic world: discrete attributes <-> an integer id, a fixed held-out split,
and the words that describe them.

Every attribute is chosen to be visible at 14-18 px face width: saturated hair and shirt
colours, hair silhouettes that differ in outline, head aspect ratios, large accessories. The
id is the mixed-radix number of the attribute indices, so every id in [0, num_identities())
is a valid, distinct person.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

Colour = tuple[int, int, int]

SKIN_TONES: dict[str, Colour] = {
    "pale": (250, 222, 200),
    "light": (236, 192, 150),
    "tan": (210, 155, 105),
    "olive": (176, 140, 90),
    "brown": (140, 90, 58),
    "dark": (92, 58, 40),
}
# Hair and shirts share one palette of far-apart hues (no white: references sit on white).
PALETTE: dict[str, Colour] = {
    "black": (28, 28, 32),
    "yellow": (246, 214, 40),
    "orange": (242, 128, 24),
    "red": (204, 28, 34),
    "pink": (250, 112, 196),
    "purple": (124, 48, 176),
    "blue": (36, 84, 224),
    "green": (36, 168, 60),
}
HAIR_COLOURS = PALETTE
SHIRT_COLOURS = PALETTE
HAIR_STYLES = ("short", "long", "spiky", "curly")
EYE_COLOURS: dict[str, Colour] = {
    "brown": (110, 60, 20),
    "blue": (40, 110, 240),
    "green": (30, 160, 60),
    "grey": (120, 124, 132),
}
HEAD_SHAPES = ("round", "long", "wide")
ACCESSORIES = ("none", "glasses", "hat")

# Mixed-radix digits, least significant first: id = skin + 6 * (hair + 8 * (style + ...)).
_ATTRIBUTE_SIZES = (
    len(SKIN_TONES), len(HAIR_COLOURS), len(HAIR_STYLES), len(EYE_COLOURS),
    len(HEAD_SHAPES), len(ACCESSORIES), len(SHIRT_COLOURS),
)  # fmt: skip
HELDOUT_FRACTION = 0.2
COUNT_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight")


@dataclass(frozen=True)
class Identity:
    """One person of the world; attribute fields hold the names used in descriptions."""

    id: int
    skin: str
    hair_colour: str
    hair_style: str
    eye_colour: str
    head_shape: str
    accessory: str
    shirt_colour: str


_NAMES = (
    tuple(SKIN_TONES), tuple(HAIR_COLOURS), HAIR_STYLES, tuple(EYE_COLOURS),
    HEAD_SHAPES, ACCESSORIES, tuple(SHIRT_COLOURS),
)  # fmt: skip


def num_identities() -> int:
    return int(np.prod(_ATTRIBUTE_SIZES))


def identity_from_id(identity_id: int) -> Identity:
    if not 0 <= identity_id < num_identities():
        raise ValueError(f"identity id must be in [0, {num_identities()}), got {identity_id}")
    digits, rest = [], int(identity_id)
    for size in _ATTRIBUTE_SIZES:
        digits.append(rest % size)
        rest //= size
    return Identity(identity_id, *(names[d] for names, d in zip(_NAMES, digits)))


def identity_to_id(skin: str, hair_colour: str, hair_style: str, eye_colour: str,
                   head_shape: str, accessory: str, shirt_colour: str) -> int:
    """The id of the person with these attribute names (the inverse of identity_from_id)."""
    values = (skin, hair_colour, hair_style, eye_colour, head_shape, accessory, shirt_colour)
    identity_id, radix = 0, 1
    for field, names, value, size in zip(fields(Identity)[1:], _NAMES, values, _ATTRIBUTE_SIZES):
        if value not in names:
            raise ValueError(f"{field.name}: unknown value {value!r}; choose from {list(names)}")
        identity_id += names.index(value) * radix
        radix *= size
    return identity_id


def _split_hash(identity_id: int) -> int:
    """A fixed 32-bit integer hash (Knuth's multiplicative, then xorshift), stable across platforms."""
    x = (int(identity_id) * 2654435761) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 2246822519) & 0xFFFFFFFF
    return x ^ (x >> 13)


def is_heldout(identity_id: int) -> bool:
    """About HELDOUT_FRACTION of ids, scattered over all attribute combinations, never trained on."""
    return _split_hash(identity_id) % 1000 < HELDOUT_FRACTION * 1000


def sample_identities(rng: np.random.Generator, n: int, split: str = "train") -> list[Identity]:
    """n identities of one split whose hair colours are pairwise distinct and shirt colours too,
    so the people of one clip can always be told apart at a glance."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if not 1 <= n <= len(PALETTE):
        raise ValueError(f"n must be in [1, {len(PALETTE)}] (one hair and shirt colour each), got {n}")
    want_heldout = split == "heldout"
    chosen: list[Identity] = []
    while len(chosen) < n:
        person = identity_from_id(int(rng.integers(num_identities())))
        if is_heldout(person.id) != want_heldout:
            continue
        if any(p.hair_colour == person.hair_colour or p.shirt_colour == person.shirt_colour for p in chosen):
            continue
        chosen.append(person)
    return chosen


FACE_ATTRIBUTES = ("skin", "hair_colour", "hair_style", "eye_colour", "head_shape", "accessory")  # all but the shirt


def look_alike(rng: np.random.Generator, person: Identity, num_changes: int, others: list[Identity] = (),
               split: str = "train") -> Identity:
    """Another identity of `split` that differs from `person` in `num_changes` face attributes (more
    when no such identity is in the split) and wears the same shirt: telling them apart takes the
    face. Its hair colour stays distinct from `others`' (the people it shares a clip with)."""
    if not 1 <= num_changes <= len(FACE_ATTRIBUTES):
        raise ValueError(f"num_changes must be in [1, {len(FACE_ATTRIBUTES)}], got {num_changes}")
    names = dict(zip((f.name for f in fields(Identity)[1:]), _NAMES))
    taken = {p.hair_colour for p in others}
    for changes in range(num_changes, len(FACE_ATTRIBUTES) + 1):
        for _ in range(200):
            values = {f.name: getattr(person, f.name) for f in fields(Identity)[1:]}
            for attribute in rng.choice(FACE_ATTRIBUTES, size=changes, replace=False):
                choices = [v for v in names[attribute] if v != values[attribute]]
                values[attribute] = choices[int(rng.integers(len(choices)))]
            other = identity_from_id(identity_to_id(**values))
            if is_heldout(other.id) == (split == "heldout") and other.hair_colour not in taken:
                return other
    raise ValueError(f"no look-alike of identity {person.id} in split {split!r}")


def face_differences(a: Identity, b: Identity) -> int:
    """How many face attributes two identities differ in."""
    return sum(getattr(a, name) != getattr(b, name) for name in FACE_ATTRIBUTES)


def describe(identity: Identity) -> str:
    """e.g. 'a person with short red hair, dark skin, blue eyes, a round face, glasses and a green shirt'."""
    parts = [
        f"a person with {identity.hair_style} {identity.hair_colour} hair",
        f"{identity.skin} skin",
        f"{identity.eye_colour} eyes",
        f"a {identity.head_shape} face",
    ]
    if identity.accessory == "glasses":
        parts.append("glasses")
    elif identity.accessory == "hat":
        parts.append("a hat")
    article = "an" if identity.shirt_colour[0] in "aeiou" else "a"
    return ", ".join(parts[:-1]) + f", {parts[-1]} and {article} {identity.shirt_colour} shirt"


def vocabulary() -> list[str]:
    """Every word that descriptions and prompts use (punctuation , : ; excluded), sorted."""
    words = {"a", "an", "person", "people", "with", "hair", "skin", "eyes", "face", "glasses", "hat", "and", "shirt"}
    words.update(COUNT_WORDS)
    for names in _NAMES:
        words.update(names)
    words.discard("none")  # "no accessory" is said by leaving it out
    return sorted(words)
