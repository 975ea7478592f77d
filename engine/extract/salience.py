"""Cheap checks in code before and after the LM: is there anything to remember, and
what does the message itself say has ended?

Small models asked to extract facts from "Thanks, have a nice day!" invent some ("User
thanks"), and they mix up which side of a change is the new one. Two deterministic
helpers cover the common English cases, so the LM is not asked what code can read:

* :func:`worth_extracting`: False when every sentence of every turn is phatic (greetings,
  thanks, farewells, acknowledgements, hedges) or a question with no first-person
  statement in it. Such turns skip the LM call: nothing is invented, and it costs
  nothing. Text the lexicon does not know (other languages included) goes to the LM.
* :func:`ended_states`: phrases after an explicit cue of change ("stopped drinking
  coffee", "quit my job at the bank", "don't eat meat anymore", "used to play the
  piano", "switched from coffee") written as short "User ..." sentences. Stored facts
  close to one are superseded, and a new fact close to one is dropped: it restates what
  the user just said is over.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.extract import Turn

__all__ = ["ended_states", "sentences", "worth_extracting"]

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
    r")[\s,]*)+$"
)
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|im|i've|i'd|i'll|my|mine|we|we're|we've|our)\b")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")

_NEGATED = re.compile(r"\b(?:i|we) (?:no longer|don't|do not) (?P<rest>[^.,;!?]+?)"
                      r" (?:any ?more|any longer)\b")
_CUE = re.compile(r"\b(?:i|we)(?:'ve| have)? (?P<cue>stopped|quit|gave up|given up|no longer"
                  r"|used to|switched from|moved away from|moved from|moved out of|sold"
                  r"|broke up with) (?P<rest>[^.,;!?]+)")
_STOP_AT = re.compile(r"\s+(?:but|and|now|since|because|as|so|these days|any ?more"
                      r"|any longer|to|for|last|yesterday|ago|this|after)\b.*$")
_POSSESSIVE = {"my": "their", "our": "their", "me": "them", "myself": "themselves"}
_VERB_OF = {"quit": "has", "sold": "owns", "broke up with": "is dating", "moved from":
            "lives in", "moved out of": "lives in", "moved away from": "lives in",
            "switched from": "uses"}


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
    return any(_informative(s) for t in turns if t.role != "assistant"
               for s in sentences(t.content))


def _rephrase(cue: str, rest: str) -> str | None:
    phrase = " ".join(_POSSESSIVE.get(w, w) for w in _STOP_AT.sub("", rest).split())
    if len(phrase) < 3:
        return None
    verb = _VERB_OF.get(cue)
    return f"User {verb} {phrase}" if verb else f"User {phrase}"


def ended_states(turns: Sequence[Turn]) -> list[str]:
    """What the user's turns say has ended, as short "User ..." sentences (English cues)."""
    found: list[str] = []
    for turn in turns:
        if turn.role == "assistant":
            continue
        lowered = " ".join(turn.content.lower().replace("\u2019", "'").split())
        matches = [("no longer", m.group("rest")) for m in _NEGATED.finditer(lowered)]
        matches += [(m.group("cue"), m.group("rest")) for m in _CUE.finditer(lowered)]
        for cue, rest in matches:
            text = _rephrase(cue, rest)
            if text and text not in found:
                found.append(text)
    return found
