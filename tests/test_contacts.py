"""runner/contacts.py on its own: what a customer's messages and preferences mean for sending."""

from __future__ import annotations

import pytest

from runner.contacts import DEFAULT_STOP_WORDS, IMPORTED, Contact, Keywords, keyword
from runner.ledger import Inbound, Preference

WORDS = Keywords.from_settings(None, None)


def said(text: str, at: str, kind: str = "text") -> Inbound:
    return Inbound(f"wamid.{at}", "1", "15550100001", at, kind, text)


@pytest.mark.parametrize(
    "text", ["STOP", "stop", " Stop! ", "СТОП", "отписаться", "Baja.", "unsubscribe", "STOP ALL"]
)
def test_stop_words_whatever_their_case_spaces_and_punctuation(text: str) -> None:
    assert keyword(text) in WORDS.stop


@pytest.mark.parametrize(
    "text", ["please stop sending me videos", "stopwatch", "I want to stop by"]
)
def test_a_stop_word_inside_a_sentence_is_not_a_stop(text: str) -> None:
    assert keyword(text) not in WORDS.stop


def test_the_defaults_cover_the_languages_the_issue_names() -> None:
    for word in ("STOP", "UNSUBSCRIBE", "СТОП", "ОТПИСАТЬСЯ", "BAJA"):
        assert keyword(word) in {keyword(w) for w in DEFAULT_STOP_WORDS}


def test_a_stop_then_a_resume_then_a_stop() -> None:
    history = [said("STOP", "2026-01-01T10:00:00+00:00")]
    contact = Contact.of(history, [], WORDS)
    assert contact.opted_out == "wrote 'STOP' on 2026-01-01T10:00:00+00:00"
    history.append(said("start", "2026-01-02T10:00:00+00:00"))
    assert Contact.of(history, [], WORDS).opted_out is None
    history.append(said("Stop.", "2026-01-03T10:00:00+00:00"))
    assert Contact.of(history, [], WORDS).opted_out == "wrote 'Stop.' on 2026-01-03T10:00:00+00:00"


def test_the_messages_own_times_decide_not_their_order_of_arrival() -> None:
    history = [
        said("START", "2026-01-02T10:00:00+00:00"),
        said("STOP", "2026-01-01T10:00:00+00:00"),
    ]
    assert Contact.of(history, [], WORDS).opted_out is None


def test_a_quick_reply_tap_is_no_stop_word() -> None:
    tap = Inbound("wamid.T", "1", "15550100001", "2026-01-01T10:00:00+00:00", "button", "Stop")
    assert Contact.of([tap], [], WORDS).opted_out is None


def test_marketing_preferences() -> None:
    stop = Preference("1", "15550100001", "2026-01-01T10:00:00+00:00", "stop")
    resume = Preference("1", "15550100001", "2026-01-02T10:00:00+00:00", "resume")
    assert Contact.of([], [stop], WORDS).marketing_stopped == (
        "stopped marketing messages on 2026-01-01T10:00:00+00:00"
    )
    assert Contact.of([], [resume, stop], WORDS).marketing_stopped is None
    assert Contact.of([], [stop], WORDS).opted_out is None  # marketing only


def test_a_flows_own_words() -> None:
    words = Keywords.from_settings(["halt"], ["go on"])
    history = [said("HALT", "2026-01-01T10:00:00+00:00")]
    assert Contact.of(history, [], words).opted_out is not None
    assert Contact.of(history, [], WORDS).opted_out is None  # not a default stop word
    history.append(said("Go  on", "2026-01-02T10:00:00+00:00"))
    assert Contact.of(history, [], words).opted_out is None


def test_an_imported_opt_out_stops_everything_until_the_customer_resumes() -> None:
    imported = Preference("1", "15550100001", "2026-01-01T10:00:00+00:00", "stop", IMPORTED)
    assert Contact.of([], [imported], WORDS).opted_out == (
        "on the business's opt-out list since 2026-01-01T10:00:00+00:00"
    )
    later = said("start", "2026-01-02T10:00:00+00:00")
    assert Contact.of([later], [imported], WORDS).opted_out is None
    earlier = said("start", "2025-12-31T10:00:00+00:00")
    assert Contact.of([earlier], [imported], WORDS).opted_out is not None
