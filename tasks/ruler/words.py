"""Needle keys and values and the word lists of RULER's generators, from a maintained package.

RULER draws its words from `wonderwords` (MIT licence): needle keys are adjective-noun pairs, common words
extraction samples nouns, adjectives and verbs. The same package's lists are used here, through its
public `RandomWord.filter`; numbers are 7 digits, UUIDs version 4 (122 random bits), as in RULER.
"""

from __future__ import annotations

import math
import random
import string
import uuid
from functools import lru_cache

KINDS = ("words", "numbers", "uuids")
NUMBER_DIGITS = 7
UUID_BITS = 122  # a version-4 UUID: 128 bits less the version and variant fields


@lru_cache(maxsize=1)
def _lists() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    from wonderwords import RandomWord

    pick = RandomWord().filter
    return tuple(pick(include_categories=["noun"])), tuple(pick(include_categories=["adjective"])), \
        tuple(pick(include_categories=["verb"]))


@lru_cache(maxsize=1)
def key_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """RULER's needle keys are every adjective-noun pair: (adjectives, nouns), each sorted; a key drawn
    uniformly from the pairs is an adjective and a noun drawn uniformly (the pairs are not built)."""
    nouns, adjectives, _ = _lists()
    return tuple(sorted(set(adjectives))), tuple(sorted(set(nouns)))


@lru_cache(maxsize=1)
def plain_words() -> tuple[str, ...]:
    """Common words extraction's words: nouns, adjectives and verbs, single words only, sorted."""
    return tuple(sorted({w for group in _lists() for w in group if w.isalpha()}))


def random_value(rng: random.Random, kind: str) -> str:
    """One needle key or value of a kind (words / numbers / uuids)."""
    if kind == "numbers":
        return str(rng.randint(10 ** (NUMBER_DIGITS - 1), 10 ** NUMBER_DIGITS - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    adjectives, nouns = key_parts()
    return f"{adjectives[rng.randrange(len(adjectives))]}-{nouns[rng.randrange(len(nouns))]}"


def distinct_values(rng: random.Random, kind: str, count: int, avoid: set[str] | None = None) -> list[str]:
    """`count` different values of a kind, none in `avoid`."""
    out: list[str] = []
    seen = set(avoid or ())
    while len(out) < count:
        value = random_value(rng, kind)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def value_logprob_chance(kind: str) -> float:
    """ln of the probability of guessing one value of this kind uniformly."""
    if kind == "numbers":
        return -math.log(9 * 10 ** (NUMBER_DIGITS - 1))
    if kind == "uuids":
        return -UUID_BITS * math.log(2.0)
    adjectives, nouns = key_parts()
    return -math.log(len(adjectives) * len(nouns))


def variable_names(rng: random.Random, count: int, letters: int = 5) -> list[str]:
    """`count` different upper-case names of `letters` letters (variable tracking)."""
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    return names


def coded_words(rng: random.Random, count: int, letters: int = 6) -> list[str]:
    """`count` different lower-case coded words (frequent words extraction)."""
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choices(string.ascii_lowercase, k=letters)))
    out = sorted(words)
    rng.shuffle(out)
    return out
