"""Slots: what a fact is about, so that code (not the LM) decides what a new fact changes.

A fact carries a *slot*: its subject ("user", or a person the user mentions: "sister
Ana"), an attribute (a short key: "home city", "job", "pets") and a value ("Porto"), beside
the standalone sentence that is stored and searched. The model names the slot, from the
vocabulary below (shown to it) or a new one; code then reads the change:

* same subject and attribute, single-valued, other value: the new fact supersedes the old;
* same value: a duplicate (the message is added as provenance);
* multi-valued attribute ("pets", "hobbies"): a new value is added beside the others.

Whether an attribute holds one value or several comes from the vocabulary; for an
attribute the model invents, a plural name ("trips", "allergies") means several and a
singular one ("gym", "favourite podcast") means one, as the instructions ask the model to
name them. Attribute names are normalised (case, spaces, synonyms: "city" and "residence"
are "home city"), and subjects match when their names agree ("sister Ana" and "Ana").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "VOCABULARY",
    "same_item",
    "specifics",
    "Slot",
    "category_of",
    "is_multi_valued",
    "names_in",
    "normalise_attribute",
    "normalise_subject",
    "normalise_value",
    "same_subject",
    "slots_asked",
    "vocabulary_text",
]


@dataclass(frozen=True)
class Slot:
    """One attribute of the vocabulary: its key, whether it holds several values, the
    fact category it maps to, and the other names a model may give it."""

    key: str
    many: bool
    category: str
    synonyms: tuple[str, ...] = ()


VOCABULARY: tuple[Slot, ...] = (
    Slot("name", False, "person", ("full name", "first name")),
    Slot("home city", False, "place", ("city", "residence", "home", "location", "lives in",
                                       "living city", "current city", "address", "home town")),
    Slot("home country", False, "place", ("country", "country of residence")),
    Slot("job", False, "work", ("employer", "company", "workplace", "work", "occupation",
                                "profession", "job title", "role", "position", "career")),
    Slot("school", False, "work", ("university", "studies", "college", "course", "degree")),
    Slot("partner", False, "person", ("relationship", "spouse", "wife", "husband",
                                      "girlfriend", "boyfriend", "relationship status")),
    Slot("diet", False, "health", ("eating habits",)),
    Slot("daily drink", False, "preference", ("drink", "morning drink", "beverage",
                                              "favourite drink", "coffee", "tea")),
    Slot("daily routine", False, "preference", ("routine", "morning routine", "schedule")),
    Slot("workout", False, "health", ("exercise", "training", "fitness", "sport routine",
                                      "gym routine")),
    Slot("bedtime", False, "health", ("sleep time", "sleep schedule", "wake time")),
    Slot("phone", False, "possession", ("smartphone", "mobile", "phone os", "mobile phone")),
    Slot("computer", False, "possession", ("laptop", "pc", "desktop", "operating system",
                                           "os")),
    Slot("car", False, "possession", ("vehicle",)),
    Slot("age", False, "person", ()),
    Slot("birthday", False, "person", ("date of birth", "birth date")),
    Slot("salary", False, "work", ("income", "pay", "wage")),
    Slot("rent", False, "possession", ("monthly rent",)),
    Slot("weight", False, "health", ("body weight",)),
    Slot("favourite language", False, "preference", ("programming language",
                                                     "favorite language")),
    Slot("pets", True, "possession", ("pet", "dog", "cat", "dogs", "cats", "pet name",
                                      "pet names")),
    Slot("children", True, "person", ("child", "kids", "kid", "son", "daughter", "sons",
                                      "daughters")),
    Slot("siblings", True, "person", ("sibling", "brother", "sister", "brothers", "sisters")),
    Slot("friends", True, "person", ("friend",)),
    Slot("hobbies", True, "preference", ("hobby", "interests", "interest", "pastime")),
    Slot("languages", True, "person", ("spoken languages", "language")),
    Slot("allergies", True, "health", ("allergy",)),
    Slot("likes", True, "preference", ("like", "loves", "preferences", "favourites")),
    Slot("dislikes", True, "preference", ("dislike", "hates")),
    Slot("plans", True, "plan", ("plan", "goal", "goals", "trip", "trips", "travel plans")),
    Slot("events", True, "event", ("event", "race", "races", "race result")),
    Slot("tools", True, "work", ("tool", "software", "apps", "app")),
)

_BY_NAME: dict[str, Slot] = {}
for _slot in VOCABULARY:
    _BY_NAME[_slot.key] = _slot
    for _name in _slot.synonyms:
        _BY_NAME.setdefault(_name, _slot)

_NON_WORD = re.compile(r"[^\w']+")
_FAVOURITE = re.compile(r"^favou?rite\b")
_SUBJECT_DROP = {"my", "the", "user's", "users", "user", "our", "his", "her", "their", "a",
                 "an", "of"}
_USER_WORDS = {"user", "the user", "me", "i", "myself", "speaker", "you", "self", "eu", "yo",
               "ich", "je", "moi"}
_VALUE_DROP = {"a", "an", "the", "to", "in", "at", "of", "as"}


def _words(text: str) -> list[str]:
    return [w for w in _NON_WORD.split(text.casefold().replace("_", " ")) if w]


def normalise_attribute(name: str) -> str:
    """The vocabulary key for ``name`` (``"Home_City"`` and ``"residence"`` become
    ``"home city"``; ``"favorite band"`` becomes ``"favourite band"``), or the cleaned name
    of an attribute the vocabulary does not know."""
    cleaned = " ".join(_words(name))
    cleaned = _FAVOURITE.sub("favourite", cleaned)
    slot = _BY_NAME.get(cleaned)
    return slot.key if slot else cleaned


def is_multi_valued(attribute: str) -> bool:
    """Whether ``attribute`` (normalised) holds several values at a time (see module doc)."""
    slot = _BY_NAME.get(attribute)
    if slot is not None:
        return slot.many
    if _FAVOURITE.match(attribute):
        return False
    last = attribute.split()[-1] if attribute else ""
    return len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is"))


def category_of(attribute: str | None) -> str:
    """The fact category of an attribute ("other" when the vocabulary does not know it)."""
    slot = _BY_NAME.get(attribute or "")
    if slot is not None:
        return slot.category
    return "preference" if attribute and _FAVOURITE.match(attribute) else "other"


def normalise_subject(subject: str, user_names: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """``"user"`` for the user (any of ``user_names`` included), else the person as the
    model wrote them with "my"/"user's" dropped (``"User's sister Ana"`` -> ``"sister Ana"``)."""
    text = " ".join(subject.split())
    if text.casefold() in _USER_WORDS or text.casefold() in user_names or not text:
        return "user"
    kept = [w for w in text.replace("\u2019", "'").split()
            if w.casefold().strip("'") not in _SUBJECT_DROP and w.casefold() != "user's"]
    return " ".join(kept) or "user"


def names_in(text: str) -> set[str]:
    """The capitalised words of ``text``, case-folded: the names in a subject or value."""
    return {w.casefold() for w in text.split() if w[:1].isupper()}


def same_subject(a: str, b: str) -> bool:
    """Whether two normalised subjects are the same person.

    Names decide when both carry one ("sister Ana" is "Ana", not "sister Maria");
    otherwise the relation words must agree ("sister" is "sister Ana").
    """
    if a.casefold() == b.casefold():
        return True
    if a == "user" or b == "user":
        return False
    names_a, names_b = names_in(a), names_in(b)
    if names_a and names_b:
        return bool(names_a & names_b)
    return bool(set(_words(a)) & set(_words(b)))


def normalise_value(value: str) -> str:
    """A value reduced for comparison: case, punctuation and articles ignored."""
    return " ".join(w for w in _words(value) if w not in _VALUE_DROP)


_SPECIFIC = re.compile(r"\d+(?:[.,:/]\d+)*|\b[A-ZÀ-Þ][\w'-]*")


def specifics(text: str) -> list[str]:
    """The numbers and capitalised words of ``text``: what must survive as written."""
    return _SPECIFIC.findall(text)


def same_item(old: str, new: str) -> bool:
    """Whether ``new`` is news about the item ``old`` names in a multi-valued slot: every
    word of the old value is in the new one ("Rex" -> "Rex (died)", "tennis" -> "tennis
    on Sundays"), in any language, since names are copied as written."""
    old_words = set(normalise_value(old).split())
    return bool(old_words) and old_words <= set(normalise_value(new).split())


def vocabulary_text() -> str:
    """The vocabulary's keys as the instructions show them: ``"name, home city, ..."``."""
    return ", ".join(s.key for s in VOCABULARY)


_QUERY_STOP = {"in", "of", "the", "a", "my", "user", "time", "status", "date", "current",
               "main", "morning", "title", "nam", "first", "full", "body", "monthly", "operat",
               "system", "train", "result", "lov", "lik", "hat", "favourit", "pay", "spoken",
               "town"}
"""Stems that name no slot in a question ("the name of the cat", "which train")."""


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _query_words() -> dict[str, str]:
    """Stemmed word -> the one slot whose key or synonyms use it (words shared by
    several slots, and filler words, name none)."""
    seen: dict[str, set[str]] = {}
    for slot in VOCABULARY:
        for name in (slot.key, *slot.synonyms):
            for word in _words(name):
                if _stem(word) not in _QUERY_STOP:
                    seen.setdefault(_stem(word), set()).add(slot.key)
    return {word: next(iter(keys)) for word, keys in seen.items() if len(keys) == 1}


_QUERY_WORDS = _query_words()
_QUERY_WORDS.update({"liv": "home city", "drink": "daily drink"})


def slots_asked(query: str) -> frozenset[str]:
    """The vocabulary slots an English question names ("where does the user work?" ->
    {"job"}, "what phone..." -> {"phone"}): search favours facts filed under them."""
    return frozenset(slot for word in _words(query)
                     if (slot := _QUERY_WORDS.get(_stem(word))) is not None)
