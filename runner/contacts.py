"""What a customer's own messages and preferences mean for sending to them: whether they asked
to stop (a stop word, whole message), or stopped marketing messages (`user_preferences`).

The receiver keeps what customers said as said (runner/ledger: `inbound`, `preferences`); this
module reads it with the flow's words, at run time, so a flow that adds a stop word honours what
customers wrote before it was added. The latest word decides, by the messages' own times (a
`STOP` after a `START` stops, whatever order the webhooks came in). WhatsApp's Business
Messaging Policy requires honouring such requests: docs/whatsapp-api.md#incoming-messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .ledger import Inbound, Preference

# Whole messages that mean "stop": the carriers' standard English words (CTIA: STOP, STOP ALL,
# UNSUBSCRIBE, CANCEL, END, QUIT), and the common ones of the languages WhatsApp campaigns meet.
DEFAULT_STOP_WORDS = (
    "STOP", "STOP ALL", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPT OUT", "OPTOUT",
    "BAJA", "DAR DE BAJA", "PARAR", "SAIR", "CANCELAR",  # Spanish, Portuguese
    "STOPP", "ABMELDEN",  # German, Scandinavian
    "ARRET", "ARRÊT", "DESABONNER", "DÉSABONNER", "DESINSCRIRE", "DÉSINSCRIRE",  # French
    "DISISCRIVI", "CANCELLAMI",  # Italian
    "AFMELDEN",  # Dutch
    "СТОП", "ОТПИСАТЬСЯ", "ОТПИСКА", "ОТПИШИТЕ",  # Russian
)  # fmt: skip
DEFAULT_RESUME_WORDS = ("START", "UNSTOP", "СТАРТ")
# The category of an opt-out the business brought (`flowrun contacts FLOW --import`): everything
# stops, as for a stop word.
IMPORTED = "imported"


def keyword(text: str) -> str:
    """A message as a stop word is compared: case-folded, without punctuation, one space
    between words (`" Stop! "` → `"stop"`)."""
    kept = "".join(c if c.isalnum() else " " for c in text.casefold())
    return " ".join(kept.split())


@dataclass(frozen=True, slots=True)
class Keywords:
    """A flow's stop and resume words, as compared."""

    stop: frozenset[str]
    resume: frozenset[str]

    @classmethod
    def from_settings(cls, stop: Sequence[str] | None, resume: Sequence[str] | None) -> Keywords:
        """The flow's words (settings.opt_out_keywords, settings.resume_keywords), else the
        defaults."""
        return cls(
            frozenset(keyword(w) for w in (DEFAULT_STOP_WORDS if stop is None else stop)),
            frozenset(keyword(w) for w in (DEFAULT_RESUME_WORDS if resume is None else resume)),
        )


@dataclass(frozen=True, slots=True)
class Contact:
    """What one customer's history says about sending to them (None: nothing against it)."""

    opted_out: str | None = None  # why nothing may be sent
    marketing_stopped: str | None = None  # why no marketing template may be sent
    wrote: str | None = None  # the time of their latest message: their window runs from it

    @classmethod
    def of(
        cls, inbound: Iterable[Inbound], preferences: Iterable[Preference], words: Keywords
    ) -> Contact:
        inbound, preferences = list(inbound), list(preferences)
        wrote = max((message.at for message in inbound), default=None)
        return cls(_opted_out(inbound, preferences, words), _marketing_stopped(preferences), wrote)

    def refusal(self, template: bool) -> str | None:
        """Why this customer must not get a step (None: nothing against it): they asked to
        stop (everything), or stopped marketing (templates: their category is not known, so
        each counts as marketing, the safe side). The one rule: the executor and `plan` ask it."""
        if self.opted_out is not None:
            return self.opted_out
        if self.marketing_stopped is not None and template:
            return self.marketing_stopped
        return None


def _opted_out(
    inbound: Iterable[Inbound], preferences: Iterable[Preference], words: Keywords
) -> str | None:
    """Why the customer gets nothing: the latest of their stop and resume words, and the
    business's own opt-out list (imported), decides."""
    latest: tuple[str, bool, str] | None = None  # (when, stops, why)
    for event in _stops_and_resumes(inbound, preferences, words):
        if latest is None or event[0] >= latest[0]:
            latest = event
    return latest[2] if latest is not None and latest[1] else None


def _stops_and_resumes(
    inbound: Iterable[Inbound], preferences: Iterable[Preference], words: Keywords
) -> Iterator[tuple[str, bool, str]]:
    for message in inbound:
        if message.kind != "text" or message.text is None:
            continue  # a tap on a button labelled "Stop" is the template's, not a stop word
        said = keyword(message.text)
        if said in words.stop or said in words.resume:
            yield message.at, said in words.stop, f"wrote '{message.text}' on {message.at}"
    for preference in preferences:
        if preference.category == IMPORTED:
            why = f"on the business's opt-out list since {preference.at}"
            yield preference.at, preference.value == "stop", why


def _marketing_stopped(preferences: Iterable[Preference]) -> str | None:
    latest: Preference | None = None
    for preference in preferences:
        if preference.category == "marketing_messages" and (
            latest is None or preference.at >= latest.at
        ):
            latest = preference
    if latest is None or latest.value != "stop":
        return None
    return f"stopped marketing messages on {latest.at}"
