"""What a customer's own messages and preferences mean for sending to them: whether they asked
to stop (a stop word, whole message), or stopped marketing messages (`user_preferences`).

The receiver keeps what customers said as said (runner/ledger: `inbound`, `preferences`); this
module reads it with the flow's words, at run time, so a flow that adds a stop word honours what
customers wrote before it was added. The latest word decides, by the messages' own times (a
`STOP` after a `START` stops, whatever order the webhooks came in). WhatsApp's Business
Messaging Policy requires honouring such requests: docs/whatsapp-api.md#incoming-messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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

    @classmethod
    def of(
        cls, inbound: Iterable[Inbound], preferences: Iterable[Preference], words: Keywords
    ) -> Contact:
        return cls(_opted_out(inbound, words), _marketing_stopped(preferences))


def _opted_out(inbound: Iterable[Inbound], words: Keywords) -> str | None:
    latest: Inbound | None = None  # the latest stop or resume word
    for message in inbound:
        if message.kind != "text" or message.text is None:
            continue  # a tap on a button labelled "Stop" is the template's, not a stop word
        said = keyword(message.text)
        if (said in words.stop or said in words.resume) and (
            latest is None or message.at >= latest.at
        ):
            latest = message
    if latest is None or latest.text is None or keyword(latest.text) in words.resume:
        return None
    return f"wrote '{latest.text}' on {latest.at}"


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
