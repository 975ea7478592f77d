"""A cheap check in code before the LM: is there anything to remember?

Small models asked to extract facts from "Thanks, have a nice day!" invent some ("User
thanks"). :func:`worth_extracting` is False when every sentence of every user turn is
phatic (greetings, thanks, farewells, acknowledgements, hedges, in English, Portuguese,
Spanish, German or French) or a question with no first-person statement in it. Such turns
skip the LM call: nothing is invented, and it costs nothing. Text the lexicon does not know
(other languages included) goes to the LM. Nothing here decides what a fact changes: that
is read from the facts' slots (:mod:`engine.extract.slots`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.extract import Turn

__all__ = ["sentences", "worth_extracting"]

_PHATIC = re.compile(
    r"^(?:(?:hi|hey|hello|yo|hiya|howdy|good (?:morning|afternoon|evening|night)"
    r"|thanks?(?: you)?(?: so much| a lot| very much)?|thx|ty|cheers|bye|goodbye"
    r"|see you(?: later| soon)?|take care|have a (?:nice|good|great) (?:day|evening|night"
    r"|weekend|one)|you too|ok(?:ay)?|k|sure|cool|nice|great|awesome|perfect|wow|lol|haha"
    r"|hahaha|hmm+|yes|yeah|yep|no|nope|maybe|i see|got it|sounds good|makes sense"
    r"|no worries|np|that'?s (?:really |very |so )?(?:helpful|great|nice|lovely|cool"
    r"|interesting|funny|good)|how are you(?: doing)?(?: today)?|what'?s up"
    r"|i don'?t know|not sure|let me think(?: about it)?(?: and get back to you)?"
    r"|i'?ll get back to you|you'?re welcome|my pleasure|(?:oh|ah|well|so|and|but|and you)"
    r"|ol[aá]|oi|obrigad[oa](?: mesmo)?|valeu|tchau|at[eé] logo|bom dia|boa (?:tarde|noite)"
    r"|hola|gracias|muchas gracias|adi[oó]s|buenos d[ií]as|buenas (?:tardes|noches)|vale"
    r"|de nada|claro|hallo|danke(?: sch[oö]n)?|tsch[uü]ss|guten (?:morgen|tag|abend)|gut"
    r"|genau|bitte|salut|bonjour|bonsoir|merci(?: beaucoup)?|au revoir|d'?accord|ciao"
    r"|super|genial|parfait|s[ií]|ja|oui|n[aã]o|nein|non|jaja|kkk+|mdr)[\s,]*)+$"
)
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|im|i've|i'd|i'll|my|mine|we|we're|we've|our"
                           r"|eu|meu|minha|meus|minhas|n[oó]s|nosso|nossa|yo|mi|mis"
                           r"|nosotros|ich|mein|meine|meinen|wir|unser|unsere|je|j'|mon|ma"
                           r"|mes|moi|nous|notre)\b")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (split at . ! ? and line ends), stripped."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def _informative(sentence: str) -> bool:
    lowered = sentence.lower().replace("\u2019", "'")
    words = " ".join(_WORD.findall(lowered))
    if not words or _PHATIC.fullmatch(words):
        return False
    return not (sentence.rstrip().endswith("?") and not _FIRST_PERSON.search(lowered))


def worth_extracting(turns: Sequence[Turn]) -> bool:
    """Whether any user turn says something the LM should look at (see module doc)."""
    return any(_informative(s) for t in turns if t.from_user for s in sentences(t.content))
