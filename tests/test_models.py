"""runner/models.py on its own: every rule the flow format states, validated without a file.

Problems are shown as `LOC: WHAT`. WHAT is the message itself where models.py words it (that
is the text people read: loader.py passes it through), else pydantic's error type and its
context (loader.py words those, and test_loader.py checks its wording).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from runner import models
from runner.models import (
    Api,
    CloudApi,
    CsvRecipients,
    Flow,
    InlineRecipient,
    OnPremApi,
    Recipients,
    Settings,
    Step,
    Template,
    TemplateHeader,
    check_http_url,
    check_language,
    is_template,
    step_kind,
)

WORDED = ("value_error", "api_kind", "step_kind", "recipients")  # worded by models.py
CLOUD = {"phone_number_id": "{{ env.WA_PHONE_NUMBER_ID }}", "token": "{{ env.WA_TOKEN }}"}


def valid(model: Any, data: Any) -> Any:
    return TypeAdapter(model).validate_python(data)


def problems(model: Any, data: Any) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(model).validate_python(data)
    shown = []
    for error in caught.value.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "-"
        kind = error["type"]
        if kind == "value_error":
            what = str(error["ctx"]["error"])
        elif kind in WORDED:
            what = error["msg"]
        else:
            context = {k: v for k, v in (error.get("ctx") or {}).items() if k != "field_type"}
            what = f"{kind} {context}" if context else kind
        shown.append(f"{where}: {what}")
    return shown


# --- templates and links -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ recipient.name }}", True),
        ("{% if x %}a{% endif %}", True),
        ("a {# note #}", True),
        ("plain text", False),
        ("{ not a template }", False),
        ("", False),
    ],
)
def test_is_template(text: str, expected: bool) -> None:
    assert is_template(text) is expected


@pytest.mark.parametrize(
    "link",
    ["https://cdn.example.com/a.jpg", "http://127.0.0.1:8080/x?y=1#z", "https://x.example"],
)
def test_http_links_pass(link: str) -> None:
    assert check_http_url(link) == link


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ("ftp://cdn.example.com/a.jpg", "'ftp://cdn.example.com/a.jpg' is not an http(s) link"),
        ("file:///etc/passwd", "'file:///etc/passwd' is not an http(s) link"),
        ("cdn.example.com/a.jpg", "'cdn.example.com/a.jpg' is not an http(s) link"),
        ("https://", "'https://' is not an http(s) link"),
        ("", "'' is not an http(s) link"),
        (
            "https://user:secret@cdn.example.com/a.jpg",
            "the link to cdn.example.com carries credentials (user:password@); remove them",
        ),
        (
            "https://token@cdn.example.com:8443/a.jpg",
            "the link to cdn.example.com:8443 carries credentials (user:password@); remove them",
        ),
        (
            "ftp://" + "x" * 100,
            "'ftp://" + "x" * 71 + "...' is not an http(s) link",  # shown to 80 characters
        ),
    ],
)
def test_links_that_are_refused(link: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        check_http_url(link)
    assert str(caught.value) == message


def test_an_at_sign_after_the_host_is_no_credential() -> None:
    link = "https://cdn.example.com/people/@alice.jpg"
    assert check_http_url(link) == link


def test_links_are_checked_when_written_and_templates_after_rendering() -> None:
    assert problems(models.ImageMedia, {"link": "ftp://x.example/a.jpg"}) == [
        "link: 'ftp://x.example/a.jpg' is not an http(s) link"
    ]
    templated = "{{ vars.cdn }}/a.jpg"  # not a link until rendered (plan.py checks it then)
    assert valid(models.ImageMedia, {"link": templated}).link == templated
    assert problems(OnPremApi, {"kind": "onprem", "base_url": "localhost", "token": "{{ t }}"}) == [
        "base_url: 'localhost' is not an http(s) link"
    ]


# --- the api -------------------------------------------------------------------------------


def test_cloud_is_the_default_api_with_its_defaults() -> None:
    api = valid(Api, CLOUD)
    assert isinstance(api, CloudApi)
    assert (api.kind, api.base_url, api.version, api.timeout) == (
        "cloud",
        "https://graph.facebook.com",
        "v26.0",
        30.0,
    )


def test_onprem_api() -> None:
    api = valid(Api, {"kind": "onprem", "base_url": "{{ env.WA_API_URL }}", "token": "{{ t }}"})
    assert isinstance(api, OnPremApi)
    assert (api.login, api.template_namespace, api.timeout) == (None, None, 30.0)


@pytest.mark.parametrize("data", [{"kind": "cluod"}, {"kind": None}, "cloud", ["cloud"], None])
def test_an_unknown_api_kind(data: Any) -> None:
    assert problems(Api, data) == ["-: api kind must be cloud (the default) or onprem"]


TOKEN_IN_FILE = (
    'the token is written in the file; flows live in git, tokens must not: write token: "{{ env'
    '.WA_TOKEN }}" and set WA_TOKEN in the environment'
)


def test_secrets_must_come_from_the_environment() -> None:
    assert problems(Api, {**CLOUD, "token": "EAAGm0PX4ZCps"}) == [f"cloud.token: {TOKEN_IN_FILE}"]
    onprem = {"kind": "onprem", "base_url": "https://wa.example"}
    assert problems(Api, {**onprem, "token": "abc"}) == [f"onprem.token: {TOKEN_IN_FILE}"]
    login = {"username": "admin", "password": "hunter2"}
    assert problems(Api, {**onprem, "login": login}) == [
        "onprem.login.password: the password is written in the file; flows live in git,"
        ' passwords must not: write password: "{{ env.WA_PASSWORD }}" and set WA_PASSWORD in'
        " the environment"
    ]
    # a user name is no secret
    login = {"username": "admin", "password": "{{ env.WA_PASSWORD }}"}
    assert valid(Api, {**onprem, "login": login}).login.username == "admin"


@pytest.mark.parametrize(
    "credentials",
    [{}, {"token": "{{ t }}", "login": {"username": "a", "password": "{{ p }}"}}],
)
def test_onprem_takes_a_token_or_a_login(credentials: dict[str, Any]) -> None:
    data = {"kind": "onprem", "base_url": "https://wa.example", **credentials}
    assert problems(Api, data) == ["onprem: give either token or login (username and password)"]


@pytest.mark.parametrize(
    ("field", "written", "expected"),
    [
        ("version", "23.0", "version: string_pattern_mismatch {'pattern': '^v\\\\d+\\\\.\\\\d+$'}"),
        ("version", "v23", "version: string_pattern_mismatch {'pattern': '^v\\\\d+\\\\.\\\\d+$'}"),
        ("timeout", 0, "timeout: greater_than {'gt': 0.0}"),
        ("timeout", 601, "timeout: less_than_equal {'le': 600.0}"),
        ("tiemout", 3, "tiemout: extra_forbidden"),
    ],
)
def test_cloud_api_fields(field: str, written: Any, expected: str) -> None:
    assert problems(CloudApi, {**CLOUD, field: written}) == [expected]


def test_cloud_api_needs_its_phone_number_id_and_token() -> None:
    assert problems(CloudApi, {}) == ["phone_number_id: missing", "token: missing"]


# --- settings ------------------------------------------------------------------------------


def test_settings_defaults_follow_the_api() -> None:
    settings = Settings()
    assert (settings.concurrency, settings.retries) == (16, 5)
    assert (settings.rate, settings.rate_per_second, settings.per_recipient_interval) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [
        ("50/s", 50.0),
        ("80/sec", 80.0),
        ("1/second", 1.0),
        ("300/min", 5.0),
        ("30/m", 0.5),
        ("90/minute", 1.5),
        (" 2.5 / s ", 2.5),
        ("0.5/s", 0.5),
    ],
)
def test_rates(rate: str, per_second: float) -> None:
    settings = valid(Settings, {"rate": rate})
    assert settings.rate == rate
    assert settings.rate_per_second == per_second


@pytest.mark.parametrize("rate", ["fast", "50", "50/h", "0/s", "0.0/min", "-5/s", "/s", "5/ s x"])
def test_rates_that_are_refused(rate: str) -> None:
    assert problems(Settings, {"rate": rate}) == [
        f"rate: rate '{rate}' should look like 50/s or 300/min"
    ]


BOUNDS = {"concurrency": (1, 1000), "retries": (0, 20), "per_recipient_interval": (0, 3600)}


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, bound) for field, bounds in BOUNDS.items() for bound in bounds]
    + [("per_recipient_interval", 0.25)],
)
def test_settings_within_bounds(field: str, value: float) -> None:
    assert getattr(valid(Settings, {field: value}), field) == value


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("concurrency", 0, "greater_than_equal {'ge': 1}"),
        ("concurrency", 1001, "less_than_equal {'le': 1000}"),
        ("retries", -1, "greater_than_equal {'ge': 0}"),
        ("retries", 21, "less_than_equal {'le': 20}"),
        ("per_recipient_interval", -0.5, "greater_than_equal {'ge': 0.0}"),
        ("per_recipient_interval", 3601, "less_than_equal {'le': 3600.0}"),
    ],
)
def test_settings_out_of_bounds(field: str, value: float, expected: str) -> None:
    assert problems(Settings, {field: value}) == [f"{field}: {expected}"]


def test_concurrency_is_a_whole_number() -> None:
    assert problems(Settings, {"concurrency": 2.5}) == ["concurrency: int_from_float"]
    assert problems(Settings, {"concurrency": "many"}) == ["concurrency: int_parsing"]


# --- recipients ----------------------------------------------------------------------------


def test_recipients_inline_with_any_fields() -> None:
    people = valid(Recipients, [{"phone": "+1 555 010 0001", "name": "Ann"}, {"phone": 4915}])
    assert [type(p) for p in people] == [InlineRecipient, InlineRecipient]
    assert people[0].model_extra == {"name": "Ann"}
    assert people[1].phone == 4915


def test_recipients_from_a_csv_file() -> None:
    source = valid(Recipients, {"csv": "people.csv", "delimiter": ";"})
    assert isinstance(source, CsvRecipients)
    assert (source.csv, source.delimiter) == ("people.csv", ";")
    assert valid(Recipients, {"csv": "people.csv"}).delimiter is None  # guessed later
    assert problems(Recipients, {"csv": "people.csv", "delimiter": ":"}) == [
        "csv.delimiter: literal_error {'expected': \"',', ';', '\\\\t' or '|'\"}"
    ]


@pytest.mark.parametrize("data", ["people.csv", 5, None])
def test_recipients_must_be_a_list_or_a_csv(data: Any) -> None:
    assert problems(Recipients, data) == ["-: recipients must be a list of people or {csv: FILE}"]


def test_an_inline_recipient_needs_a_phone() -> None:
    assert problems(Recipients, [{"name": "Ann"}]) == ["list.0.phone: missing"]


# --- media ---------------------------------------------------------------------------------


MEDIA = {
    "image": models.ImageMedia,
    "video": models.VideoMedia,
    "document": models.DocumentMedia,
    "audio": models.AudioMedia,
    "sticker": models.StickerMedia,
}


@pytest.mark.parametrize("kind", MEDIA)
@pytest.mark.parametrize(
    ("sources", "found"),
    [
        ({}, "found none"),
        ({"id": "1", "link": "https://x.example/a"}, "found id and link"),
        ({"link": "https://x.example/a", "file": "a.jpg"}, "found link and file"),
        ({"id": "1", "link": "https://x.example/a", "file": "a"}, "found id and link and file"),
    ],
)
def test_a_media_object_has_exactly_one_source(
    kind: str, sources: dict[str, str], found: str
) -> None:
    assert problems(MEDIA[kind], sources) == [f"-: give exactly one of id, link or file ({found})"]


@pytest.mark.parametrize("source", [{"id": "4490709327384033"}, {"file": "assets/a.jpg"}])
def test_a_provider_goes_only_with_a_link(source: dict[str, str]) -> None:
    assert problems(models.ImageMedia, {**source, "provider": {"name": "cdn"}}) == [
        "-: provider goes only with link"
    ]
    media = valid(models.ImageMedia, {"link": "https://x.example/a", "provider": {"name": "cdn"}})
    assert media.provider is not None
    assert media.provider.name == "cdn"


@pytest.mark.parametrize("kind", ["image", "video", "document"])
def test_a_caption_on_image_video_and_document(kind: str) -> None:
    assert valid(MEDIA[kind], {"id": "1", "caption": "Hi {{ recipient.name }}"}).caption


@pytest.mark.parametrize("kind", ["audio", "sticker"])
def test_no_caption_on_audio_and_sticker(kind: str) -> None:
    assert problems(MEDIA[kind], {"id": "1", "caption": "hi"}) == ["caption: extra_forbidden"]


@pytest.mark.parametrize("kind", MEDIA)
def test_a_filename_only_on_documents(kind: str) -> None:
    data = {"id": "1", "filename": "Prices {{ recipient.city }}.pdf"}
    if kind == "document":
        assert valid(MEDIA[kind], data).filename == data["filename"]
    else:
        assert problems(MEDIA[kind], data) == ["filename: extra_forbidden"]


def test_text_messages() -> None:
    text = valid(models.Text, {"body": "Questions? Just reply."})
    assert (text.body, text.preview_url) == ("Questions? Just reply.", False)
    assert problems(models.Text, {}) == ["body: missing"]
    assert problems(models.Text, {"body": "x", "preview_url": "maybe"}) == [
        "preview_url: bool_parsing"
    ]


# --- templates -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hello_world", "onboarding_welcome", "a", "x" * 512, "q3_2026"])
def test_template_names(name: str) -> None:
    assert valid(Template, {"name": name, "language": "en_US"}).name == name


@pytest.mark.parametrize("name", ["Hello", "hello-world", "hello world", "", "x" * 513, "a\n"])
def test_template_names_that_are_refused(name: str) -> None:
    assert problems(Template, {"name": name, "language": "en_US"}) == [
        "name: string_pattern_mismatch {'pattern': '^[a-z0-9_]{1,512}$'}"
    ]


@pytest.mark.parametrize("code", ["en", "de", "en_US", "pt_BR", "zh_HK", "fil", "es_419"])
def test_language_codes(code: str) -> None:
    assert check_language(code) == code
    assert valid(Template, {"name": "t", "language": code}).language == code


@pytest.mark.parametrize("code", ["EN", "en-US", "english", "e", "en_", "en_US_x", "en\n", ""])
def test_language_codes_that_are_refused(code: str) -> None:
    message = f"{code!r} is not a language code like en_US or de"  # one line, even for en\n
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        check_language(code)
    assert str(caught.value) == message
    assert problems(Template, {"name": "t", "language": code}) == [f"language: {message}"]


def test_a_templated_language_is_checked_after_rendering() -> None:
    language = "{{ 'de' if recipient.lang == 'de' else 'en_US' }}"
    assert valid(Template, {"name": "t", "language": language}).language == language


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ({"image": {"file": "assets/welcome.jpg"}}, "image"),
        ({"video": {"link": "https://x.example/v.mp4"}}, "video"),
        ({"document": {"id": "1", "filename": "Invoice.pdf"}}, "document"),
        ({"text": "{{ recipient.name }}"}, "text"),
    ],
)
def test_a_header_of_each_kind(header: dict[str, Any], kind: str) -> None:
    assert valid(TemplateHeader, header).kind == kind


@pytest.mark.parametrize(
    ("header", "found"),
    [
        ({}, "found none"),
        ({"image": {"id": "1"}, "text": "x"}, "found image and text"),
        ({"video": {"id": "1"}, "document": {"id": "2"}}, "found video and document"),
    ],
)
def test_a_header_has_exactly_one_kind(header: dict[str, Any], found: str) -> None:
    assert problems(TemplateHeader, header) == [
        f"-: a header has exactly one of image, video, document, text, location ({found})"
    ]


def test_only_a_document_header_has_a_filename() -> None:
    assert problems(TemplateHeader, {"image": {"id": "1", "filename": "a.jpg"}}) == [
        "image.filename: extra_forbidden"
    ]
    assert problems(TemplateHeader, {"image": {"id": "1", "caption": "hi"}}) == [
        "image.caption: extra_forbidden"
    ]
    assert problems(TemplateHeader, {"image": {}}) == [
        "image: give exactly one of id, link or file (found none)"
    ]


def test_buttons() -> None:
    buttons = [{"url": "start?lang={{ recipient.lang }}"}, {"quick_reply": "started", "index": 2}]
    template = valid(Template, {"name": "t", "language": "en", "buttons": buttons})
    assert [(b.url, b.quick_reply, b.index) for b in template.buttons] == [
        ("start?lang={{ recipient.lang }}", None, None),
        (None, "started", 2),
    ]


ONE_KIND = "a button has exactly one of url, quick_reply or copy_code"


@pytest.mark.parametrize(
    ("buttons", "expected"),
    [
        ([{}], f"buttons.0: {ONE_KIND}"),
        ([{"url": "a", "quick_reply": "b"}], f"buttons.0: {ONE_KIND}"),
        ([{"url": "a", "index": 10}], "buttons.0.index: less_than_equal {'le': 9}"),
        ([{"url": "a", "index": -1}], "buttons.0.index: greater_than_equal {'ge': 0}"),
        # by position: the first is 0, the second 1
        ([{"url": "a", "index": 1}, {"quick_reply": "b"}], "-: two buttons have the same index"),
        ([{"url": "a"}, {"quick_reply": "b", "index": 0}], "-: two buttons have the same index"),
    ],
)
def test_buttons_that_are_refused(buttons: list[dict[str, Any]], expected: str) -> None:
    assert problems(Template, {"name": "t", "language": "en", "buttons": buttons}) == [expected]


def test_buttons_may_name_their_positions_in_any_order() -> None:
    buttons = [{"url": "a", "index": 1}, {"quick_reply": "b", "index": 0}]
    assert len(valid(Template, {"name": "t", "language": "en", "buttons": buttons}).buttons) == 2


def test_template_body_parameters_in_order() -> None:
    body = ["{{ recipient.name }}", "{{ recipient.city }}"]
    assert valid(Template, {"name": "t", "language": "en", "body": body}).body == body
    assert valid(Template, {"name": "t", "language": "en"}).body == []


# --- steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "cls"),
    [
        ({"audio": {"link": "https://x.example/hello.ogg"}}, models.AudioStep),
        ({"document": {"id": "1"}}, models.DocumentStep),
        ({"image": {"file": "a.jpg"}}, models.ImageStep),
        ({"sticker": {"file": "wave.webp"}}, models.StickerStep),
        ({"template": {"name": "hello_world", "language": "en_US"}}, models.TemplateStep),
        ({"text": {"body": "hi"}, "name": "greet", "when": "recipient.vip"}, models.TextStep),
        ({"video": {"id": "1"}}, models.VideoStep),
    ],
)
def test_each_step_kind(step: dict[str, Any], cls: type[Any]) -> None:
    parsed = valid(Step, step)
    assert type(parsed) is cls
    assert step_kind(step) == parsed.kind == cls.kind
    assert step_kind(parsed) == cls.kind
    kind = next(k for k in step if k not in ("name", "when"))
    assert parsed.content == getattr(parsed, kind)


@pytest.mark.parametrize(
    "step",
    [{}, {"name": "x"}, {"txt": {"body": "hi"}}, {"text": {"body": "hi"}, "image": {"id": "1"}}],
)
def test_a_step_needs_exactly_one_message_type(step: dict[str, Any]) -> None:
    assert step_kind(step) is None
    assert problems(Step, step) == [
        "-: a step needs exactly one message type: audio, document, image, sticker, template,"
        " text or video"
    ]


@pytest.mark.parametrize("value", ["text", ["text"], None, 3])
def test_a_step_must_be_a_mapping(value: Any) -> None:
    assert step_kind(value) is None


@pytest.mark.parametrize("name", ["welcome", "step 2", "a", "x" * 100, "día-1"])
def test_step_names(name: str) -> None:
    assert valid(Step, {"name": name, "text": {"body": "hi"}}).name == name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("#2", "string_pattern_mismatch {'pattern': '^[^\\\\s#](.*\\\\S)?$'}"),
        (" a", "string_pattern_mismatch {'pattern': '^[^\\\\s#](.*\\\\S)?$'}"),
        ("a ", "string_pattern_mismatch {'pattern': '^[^\\\\s#](.*\\\\S)?$'}"),
        ("a\nb", "string_pattern_mismatch {'pattern': '^[^\\\\s#](.*\\\\S)?$'}"),
        ("", "string_too_short {'min_length': 1}"),
        ("x" * 101, "string_too_long {'max_length': 100}"),
    ],
)
def test_step_names_that_are_refused(name: str, expected: str) -> None:
    """A name may not start with '#': '#2' is how the ledger knows an unnamed second step."""
    assert problems(Step, {"name": name, "text": {"body": "hi"}}) == [f"text.name: {expected}"]


# --- the flow ------------------------------------------------------------------------------


MINIMAL = {
    "version": 1,
    "api": CLOUD,
    "recipients": [{"phone": "+1 555 010 0001"}],
    "messages": [{"text": {"body": "hi"}}],
}


def test_a_minimal_flow_and_its_defaults() -> None:
    flow = Flow.model_validate(MINIMAL)
    assert (flow.name, flow.vars, flow.settings) == (None, {}, Settings())
    assert isinstance(flow.api, CloudApi)
    assert [type(step) for step in flow.messages] == [models.TextStep]


def test_flows_are_frozen() -> None:
    flow = Flow.model_validate(MINIMAL)
    with pytest.raises(ValidationError, match="frozen_instance"):
        flow.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"version": 2}, "version: literal_error {'expected': '1'}"),
        ({"version": "1"}, "version: literal_error {'expected': '1'}"),
        ({"name": ""}, "name: string_too_short {'min_length': 1}"),
        ({"messages": []}, "messages: too_short {'min_length': 1, 'actual_length': 0}"),
        ({"vars": ["a"]}, "vars: dict_type"),
        ({"recipient": []}, "recipient: extra_forbidden"),
    ],
)
def test_flow_level_rules(change: dict[str, Any], expected: str) -> None:
    assert problems(Flow, {**MINIMAL, **change}) == [expected]


def test_every_problem_of_a_flow_at_once() -> None:
    flow = {
        "version": 1,
        "api": {"phone_number_id": "1", "token": "{{ env.WA_TOKEN }}", "timeout": -1},
        "settings": {"concurrency": 0, "rate": "fast"},
        "recipients": {"csv": "people.csv", "delimiter": ":"},
        "messages": [{"text": {"body": "hi"}}, {"image": {}}, {"txt": {}}],
    }
    assert problems(Flow, flow) == [
        "api.cloud.timeout: greater_than {'gt': 0.0}",
        "settings.concurrency: greater_than_equal {'ge': 1}",
        "settings.rate: rate 'fast' should look like 50/s or 300/min",
        "recipients.csv.delimiter: literal_error {'expected': \"',', ';', '\\\\t' or '|'\"}",
        "messages.1.image.image: give exactly one of id, link or file (found none)",
        "messages.2: a step needs exactly one message type: audio, document, image, sticker,"
        " template, text or video",
    ]


def test_the_json_schema_carries_the_rate_pattern_for_editors() -> None:
    rate = Flow.model_json_schema()["$defs"]["Settings"]["properties"]["rate"]
    assert rate["pattern"] == models.RATE_PATTERN
