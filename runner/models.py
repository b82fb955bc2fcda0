"""The flow format as pydantic models: the one definition of what a flow may say.

The models check structure (keys, types, which keys go together); template strings stay strings
here and are compiled and rendered later (plan.py, render.py), then the rendered values are
checked again. Validating structure before rendering keeps every field a plain typed value
instead of `str | dict | ...` unions (the trap tavern fell into). The JSON Schema in
schemas/flow.schema.json is generated from these classes, so editors complete what this accepts.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from .durations import Duration
from .quiet_hours import WINDOW_PATTERN, check_send_between, check_timezone
from .recipients import check_country

CAPTION_MAX = 1024  # Meta's image/video/document reference: "Maximum 1024 characters"
TEXT_BODY_MAX = 4096  # text messages; longer bodies fail with error 1001 / 131008


def is_template(text: str) -> bool:
    """Whether a string needs rendering; constants are checked once, at load time."""
    return "{{" in text or "{%" in text or "{#" in text


def check_http_url(text: str) -> str:
    """WhatsApp fetches links itself and accepts only http(s); checked again after rendering.

    No credentials in a URL (`https://user:pass@host/`): they would travel with every message
    and land in logs and the ledger; a link must be fetchable as it is, and the API's own
    credentials belong in api.token."""
    match = re.match(r"https?://([^\s/?#]+)", text)
    if not match:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"'{shown}' is not an http(s) link")
    if "@" in match.group(1):
        host = match.group(1).rsplit("@", 1)[1]
        raise ValueError(f"the link to {host} carries credentials (user:password@); remove them")
    return text


def _static_url(text: str) -> str:
    return text if is_template(text) else check_http_url(text)


TemplateText = Annotated[
    str, Field(description="Text; may be a Jinja2 template using recipient, vars and env.")
]
Url = Annotated[
    str,
    AfterValidator(_static_url),
    Field(description="An http(s) URL; may be a Jinja2 template."),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret_from_environment(value: str, what: str, variable: str) -> str:
    if not is_template(value):
        raise ValueError(
            f"the {what} is written in the file; flows live in git, {what}s must not: "
            f'write {what}: "{{{{ env.{variable} }}}}" and set {variable} in the environment'
        )
    return value


API_KINDS = ("cloud", "onprem")
VERSION_PATTERN = r"^v\d+\.\d+$"
TEMPLATE_NAME_PATTERN = r"^[a-z0-9_]{1,512}$"


class CloudApi(_Strict):
    """The Cloud API (graph.facebook.com): what a business uses today, and the default."""

    kind: Literal["cloud"] = Field(
        "cloud", description="cloud (the default: Meta's API since the On-Premises one ended)."
    )
    phone_number_id: TemplateText = Field(
        description="The business phone number's id (not the number itself), e.g."
        " '{{ env.WA_PHONE_NUMBER_ID }}'."
    )
    token: TemplateText = Field(
        description="Access token, read from the environment: '{{ env.WA_TOKEN }}'."
    )
    waba_id: TemplateText | None = Field(
        None,
        description="The WhatsApp Business Account's id, e.g. '{{ env.WA_WABA_ID }}': where"
        " flowrun templates pull reads the account's templates.",
    )
    base_url: Url = Field(
        "https://graph.facebook.com",
        description="Graph API root; change it for a proxy, a provider or a sandbox.",
    )
    version: str = Field(
        "v26.0",
        pattern=VERSION_PATTERN,
        description="Graph API version, e.g. v26.0 (the default): pin the one you tested with.",
    )
    marketing_messages: bool = Field(
        False,
        description="Send the steps whose template is of category MARKETING (as the template"
        " lock beside the flow says: flowrun templates pull) through the Marketing Messages"
        " API, POST /{version}/{phone_number_id}/marketing_messages, with the same body; other"
        " messages keep /messages. Without a lock no step uses it (a warning says so).",
    )
    timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds to wait for an answer to one request."
    )

    @field_validator("token")
    @classmethod
    def _token_from_environment(cls, value: str) -> str:
        return _secret_from_environment(value, "token", "WA_TOKEN")


class Login(_Strict):
    """On-Premises login (POST /v1/users/login): the API issues the token."""

    username: TemplateText = Field(description="API user name.")
    password: TemplateText = Field(
        description="Password, read from the environment: '{{ env.WA_PASSWORD }}'."
    )

    @field_validator("password")
    @classmethod
    def _password_from_environment(cls, value: str) -> str:
        return _secret_from_environment(value, "password", "WA_PASSWORD")


class OnPremApi(_Strict):
    """The On-Premises API (paths under /v1), as some providers still serve it."""

    kind: Literal["onprem"] = Field(description="onprem: the self-hosted /v1 API.")
    base_url: Url = Field(description="http(s) URL of the On-Premises API.")
    token: TemplateText | None = Field(
        None, description="Bearer token, read from the environment: '{{ env.WA_TOKEN }}'."
    )
    login: Login | None = Field(None, description="Log in for a token instead of giving one.")
    template_namespace: TemplateText | None = Field(
        None, description="The business's template namespace; needed for template steps."
    )
    timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds to wait for an answer to one request."
    )

    @field_validator("token")
    @classmethod
    def _token_from_environment(cls, value: str | None) -> str | None:
        return None if value is None else _secret_from_environment(value, "token", "WA_TOKEN")

    @model_validator(mode="after")
    def _one_credential(self) -> OnPremApi:
        if (self.token is None) == (self.login is None):
            raise ValueError("give either token or login (username and password)")
        return self


def _api_kind(value: Any) -> str | None:
    if isinstance(value, CloudApi | OnPremApi):
        return value.kind
    if not isinstance(value, dict):
        return None
    kind = value.get("kind", "cloud")
    return kind if kind in API_KINDS else None


Api = Annotated[
    Annotated[CloudApi, Tag("cloud")] | Annotated[OnPremApi, Tag("onprem")],
    Discriminator(
        _api_kind,
        custom_error_type="api_kind",
        custom_error_message="api kind must be cloud (the default) or onprem",
    ),
]


RATE_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*$"


def _check_rate(text: str) -> str:
    match = re.match(RATE_PATTERN, text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"rate '{text}' should look like 50/s or 300/min")
    return text


class Settings(_Strict):
    """How fast and how hard to try; unset limits follow the API's documented ones."""

    concurrency: int = Field(16, ge=1, le=1000, description="Requests in flight at once.")
    rate: Annotated[str, AfterValidator(_check_rate)] | None = Field(
        None,
        json_schema_extra={"pattern": RATE_PATTERN},
        description="Ceiling on messages sent, N/s or N/min, e.g. 50/s. Default: the API's"
        " documented limit (Cloud 80/s, On-Premises 250/s).",
    )
    per_recipient_interval: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="Seconds between two messages to one recipient. Default: Cloud 6 (Meta's"
        " pair rate), On-Premises 0.",
    )
    retries: int = Field(5, ge=0, le=20, description="Retries of a message after a failure.")
    opt_out_keywords: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        None,
        max_length=100,
        description="Whole messages that mean the customer asks to stop (any case, spaces and"
        " punctuation ignored); they get nothing more from this number. Default: STOP,"
        " UNSUBSCRIBE, CANCEL, END, QUIT, BAJA, STOPP, ARRÊT, СТОП, ОТПИСАТЬСЯ and others.",
    )
    resume_keywords: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        None,
        max_length=100,
        description="Whole messages that undo a stop. Default: START, UNSTOP, СТАРТ.",
    )
    window: Literal["check", "open"] = Field(
        "check",
        description="check (the default): a message that is not a template goes only to a"
        " customer who wrote in the last 24 hours (as the ledger or the CSV's last_inbound_at"
        " column says), else it waits for them to write. open: you state that every recipient"
        " wrote in the last 24 hours; flowrun trusts it (the API still refuses a closed window,"
        " and then the message waits).",
    )
    send_between: Annotated[str, AfterValidator(check_send_between)] | None = Field(
        None,
        json_schema_extra={"pattern": WINDOW_PATTERN},
        description="Quiet hours: messages go only between these local times of each recipient,"
        " e.g. '09:00-20:00' (a window may cross midnight: '22:00-06:00'); a message due"
        " outside it waits until it opens. The recipient's time zone: a `timezone` column"
        " (IANA name, e.g. Europe/Berlin), else their phone number's country, else"
        " settings.timezone.",
    )
    timezone: Annotated[str, AfterValidator(check_timezone)] | None = Field(
        None,
        description="IANA time zone (e.g. Europe/Berlin) for recipients whose own is not known;"
        " default UTC.",
    )
    default_country: Annotated[str, AfterValidator(check_country)] | None = Field(
        None,
        json_schema_extra={"pattern": "^[A-Za-z]{2}$"},
        description="Country (two letters of ISO 3166: GB, DE, US) of phones written without"
        " a country code, in the CSV or the flow: with GB, 07700 900456 is +44 7700 900456."
        " Without it, every phone needs its country code (+44 ..., 0044 ..., or 44...).",
    )
    messaging_limit: Literal[250, 2000, 10000, 100000, "unlimited"] | None = Field(
        None,
        description="Your business portfolio's messaging limit: how many distinct customers"
        " may get a message outside their 24-hour window per rolling 24 hours (250, 2000,"
        " 10000, 100000 or unlimited; WhatsApp Manager shows it). plan and a run warn when"
        " more would get a template now. Unset: not checked.",
    )
    expires: Duration = Field(
        "7d",
        description="How long a step waits (for the customer to write, or to answer) before it"
        " is skipped and the flow goes on, counted from the recipient's last message sent."
        " Default 7d; a step's own expires overrides it.",
    )

    @property
    def rate_per_second(self) -> float | None:
        if self.rate is None:
            return None
        match = re.match(RATE_PATTERN, self.rate)
        assert match is not None  # checked by the validator
        value = float(match.group(1))
        return value if match.group(2) in ("s", "sec", "second") else value / 60


class CsvRecipients(_Strict):
    """Recipients from a CSV file with a header row and a `phone` column."""

    csv: str = Field(description="Path of the CSV file, relative to the flow file.")
    delimiter: Literal[",", ";", "\t", "|"] | None = Field(
        None, description="Column separator; by default guessed from the header row."
    )
    when: str | None = Field(
        None,
        description="A Jinja2 expression on each row (recipient.COLUMN, vars): only the rows it"
        " is true for are recipients of this flow, e.g. recipient.active == 'yes'.",
    )


class InlineRecipient(BaseModel):
    """One recipient written in the flow: a phone and any fields templates may use."""

    model_config = ConfigDict(extra="allow", frozen=True)
    phone: str | int = Field(description="Phone number with country code, e.g. +1 555 010 0001.")


def _recipients_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "csv"
    return None


Recipients = Annotated[
    Annotated[list[InlineRecipient], Tag("list")] | Annotated[CsvRecipients, Tag("csv")],
    Discriminator(
        _recipients_kind,
        custom_error_type="recipients",
        custom_error_message="recipients must be a list of people or {csv: FILE}",
    ),
]


class Provider(_Strict):
    """Media provider configured on the On-Premises API for downloading links."""

    name: TemplateText


class _Media(_Strict):
    """A media object: exactly one source, as the API requires."""

    id: TemplateText | None = Field(None, description="An already uploaded media id.")
    link: Url | None = Field(None, description="An http(s) link WhatsApp downloads.")
    file: TemplateText | None = Field(
        None, description="A local file, relative to the flow; uploaded once, sent by id."
    )
    provider: Provider | None = Field(None, description="Only with link (On-Premises).")

    @model_validator(mode="after")
    def _one_source(self) -> _Media:
        given = [name for name in ("id", "link", "file") if getattr(self, name) is not None]
        if len(given) != 1:
            found = f"found {' and '.join(given)}" if given else "found none"
            raise ValueError(f"give exactly one of id, link or file ({found})")
        if self.provider is not None and self.link is None:
            raise ValueError("provider goes only with link")
        return self


class ImageMedia(_Media):
    caption: TemplateText | None = Field(None, description="Up to 1024 characters.")


class VideoMedia(_Media):
    caption: TemplateText | None = Field(None, description="Up to 1024 characters.")


class DocumentMedia(_Media):
    caption: TemplateText | None = Field(None, description="Up to 1024 characters.")
    filename: TemplateText | None = Field(
        None, description="Name shown to the recipient; without it WhatsApp shows 'Untitled'."
    )


class AudioMedia(_Media):
    pass


class StickerMedia(_Media):
    pass


class Text(_Strict):
    body: TemplateText = Field(description="Up to 4096 characters.")
    preview_url: bool = Field(False, description="Show a preview of the first link in body.")


LANGUAGE_PATTERN = r"^[a-z]{2,3}(_[A-Za-z0-9]{2,4})?$"


def check_language(text: str) -> str:
    """WhatsApp's language codes: en, en_US, pt_BR, zh_HK; checked again after rendering."""
    if not re.fullmatch(LANGUAGE_PATTERN, text):  # re.match's $ lets "en\n" through
        raise ValueError(f"{text!r} is not a language code like en_US or de")  # one line
    return text


def _static_language(text: str) -> str:
    return text if is_template(text) else check_language(text)


class HeaderMedia(_Media):
    """An image or video in a template's header."""


class HeaderDocument(_Media):
    filename: TemplateText | None = Field(None, description="Name shown to the recipient.")


# A number written in the flow, or a template that renders to one (checked after rendering)
Number = Annotated[
    float | TemplateText, Field(description="A number; may be a Jinja2 template that renders one.")
]
Whole = Annotated[
    int | TemplateText,
    Field(description="A whole number; may be a Jinja2 template that renders one."),
]
# A NAMED template's placeholder, as Meta allows them ({{first_name}})
PARAMETER_NAME_PATTERN = r"^[a-z0-9_]{1,512}$"
ParameterName = Annotated[str, Field(pattern=PARAMETER_NAME_PATTERN)]


class HeaderLocation(_Strict):
    """The map of a LOCATION header, given at send time
    (docs/whatsapp-api.md#template-parameters)."""

    latitude: Number = Field(description="Degrees, -90 to 90.")
    longitude: Number = Field(description="Degrees, -180 to 180.")
    name: TemplateText = Field(description="The place's name, shown under the map.")
    address: TemplateText = Field(description="The place's address, shown under the map.")


class TemplateHeader(_Strict):
    """The header parameter of a template: one image, video, document, text or location."""

    image: HeaderMedia | None = None
    video: HeaderMedia | None = None
    document: HeaderDocument | None = None
    text: TemplateText | dict[ParameterName, TemplateText] | None = Field(
        None,
        description="The text header's parameter; for a NAMED template a mapping of its one"
        " placeholder's name to the value, e.g. {sale_name: Summer sale}.",
    )
    location: HeaderLocation | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TemplateHeader:
        given = [name for name in HEADER_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            found = f"found {' and '.join(given)}" if given else "found none"
            raise ValueError(
                f"a header has exactly one of image, video, document, text, location ({found})"
            )
        if isinstance(self.text, dict) and len(self.text) != 1:
            raise ValueError("a named text header takes one parameter: {name: value}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in HEADER_KINDS if getattr(self, name) is not None)


HEADER_KINDS = ("image", "video", "document", "text", "location")


class Currency(_Strict):
    """An amount of money (the API's currency object); the Cloud API shows `fallback_value`."""

    fallback_value: TemplateText = Field(description="The text shown, e.g. '$12.50'.")
    code: TemplateText = Field(description="ISO 4217 currency code, e.g. USD.")
    amount_1000: Whole = Field(description="The amount times 1000: 12500 is 12.50.")


class CurrencyParameter(_Strict):
    currency: Currency


class DateTime(_Strict):
    """A date and time (the API's date_time object); the Cloud API shows `fallback_value`."""

    fallback_value: TemplateText = Field(description="The text shown, e.g. 'March 3, 2027'.")


class DateTimeParameter(_Strict):
    date_time: DateTime


BodyParameter = Annotated[
    TemplateText | CurrencyParameter | DateTimeParameter,
    Field(description="Text, or {currency: {...}} or {date_time: {...}}."),
]


class TemplateButton(_Strict):
    """The parameter of one button: the end of a URL button's link, a quick reply's payload
    (what your webhook receives when it is pressed), or a copy code button's code."""

    url: TemplateText | None = Field(None, description="Text appended to the button's URL.")
    quick_reply: TemplateText | None = Field(None, description="Payload of a quick reply.")
    copy_code: TemplateText | None = Field(
        None, description="The code a copy code button copies (up to 15 characters)."
    )
    index: int | None = Field(
        None,
        ge=0,
        le=9,
        description="The button's position in the template (default: its position in this list).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> TemplateButton:
        given = [name for name in BUTTON_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("a button has exactly one of url, quick_reply or copy_code")
        return self

    @property
    def kind(self) -> str:
        """The send's sub_type: url, quick_reply or copy_code."""
        return next(name for name in BUTTON_KINDS if getattr(self, name) is not None)

    @property
    def value(self) -> str:
        value = getattr(self, self.kind)
        assert isinstance(value, str)
        return value


BUTTON_KINDS = ("url", "quick_reply", "copy_code")


class LimitedTimeOffer(_Strict):
    """When a limited-time offer ends (the template's offer component, with an expiration)."""

    expiration_time_ms: Whole = Field(
        description="The offer's end as a UNIX timestamp in milliseconds; may be a template,"
        " e.g. '{{ recipient.offer_ends_ms }}'."
    )


class Template(_Strict):
    """A message template approved in WhatsApp Manager, with its parameters."""

    name: str = Field(
        pattern=TEMPLATE_NAME_PATTERN,
        description="Template name: lower-case letters, digits and underscores.",
    )
    language: Annotated[str, AfterValidator(_static_language)] = Field(
        description="Language code the template was approved in, e.g. en_US or de; may be a"
        " template (a language per recipient)."
    )
    header: TemplateHeader | None = Field(None, description="The header's parameter, if any.")
    body: list[BodyParameter] | dict[ParameterName, BodyParameter] = Field(
        default_factory=list,
        description="Body parameters: a list for {{1}}, {{2}}, ... in order; a mapping by name"
        " for a template with named parameters ({first_name: ..., date: ...}).",
    )
    limited_time_offer: LimitedTimeOffer | None = Field(
        None, description="A limited-time offer template's expiration."
    )
    buttons: list[TemplateButton] = Field(default_factory=list, description="Button parameters.")

    @model_validator(mode="after")
    def _distinct_buttons(self) -> Template:
        indexes = [b.index if b.index is not None else i for i, b in enumerate(self.buttons)]
        if len(set(indexes)) != len(indexes):
            raise ValueError("two buttons have the same index")
        return self


EVENTS = ("sent", "delivered", "read", "replied")


class After(_Strict):
    """A step due a while after something happened to an earlier step's message."""

    step: str = Field(description="The earlier step, by name.")
    event: Literal["sent", "delivered", "read", "replied"] = Field(
        "sent", description="sent, delivered, read (from the status webhooks) or replied."
    )
    wait: Duration | None = Field(None, description="How long after the event (default: at once).")


def _after_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "duration"
    if isinstance(value, dict | After):
        return "event"
    return None


AfterSpec = Annotated[
    Annotated[Duration, Tag("duration")] | Annotated[After, Tag("event")],
    Discriminator(
        _after_kind,
        custom_error_type="after",
        custom_error_message="after is a duration (2d) or {step: NAME, event: read, wait: 1h}",
    ),
]


# A name may not start with "#": "#2" is how the ledger knows an unnamed second step.
STEP_NAME_PATTERN = r"^[^\s#](.*\S)?$"
StepName = Annotated[str, Field(min_length=1, max_length=100, pattern=STEP_NAME_PATTERN)]


class _Step(_Strict):
    kind: ClassVar[str]
    name: StepName | None = Field(
        None, description="Unique name; the ledger knows the step by it (else by its position)."
    )
    when: str | None = Field(
        None,
        description="A Jinja2 expression; the step is sent only when it is true. It may read"
        " an earlier named step's answer: steps.NAME.button (the quick reply tapped on it),"
        " steps.NAME.reply (the text of the customer's first message after it), and"
        " steps.NAME.answered; the step then waits for that answer.",
    )
    expires: Duration | None = Field(
        None,
        description="How long this step may wait (for the customer to write, or to answer)"
        " before it is skipped; default settings.expires (7d).",
    )
    after: AfterSpec | None = Field(
        None,
        description="When the step is due: a duration after the recipient's previous message"
        " was sent (2d), or after an event of an earlier step: {step: welcome, event: read,"
        " wait: 1h}. Before that it waits.",
    )

    @property
    def content(self) -> _Media | Text | Template:
        value = getattr(self, self.kind)
        assert isinstance(value, _Media | Text | Template)
        return value


class ImageStep(_Step):
    kind: ClassVar[str] = "image"
    image: ImageMedia


class VideoStep(_Step):
    kind: ClassVar[str] = "video"
    video: VideoMedia


class DocumentStep(_Step):
    kind: ClassVar[str] = "document"
    document: DocumentMedia


class AudioStep(_Step):
    kind: ClassVar[str] = "audio"
    audio: AudioMedia


class StickerStep(_Step):
    kind: ClassVar[str] = "sticker"
    sticker: StickerMedia


class TextStep(_Step):
    kind: ClassVar[str] = "text"
    text: Text


class TemplateStep(_Step):
    kind: ClassVar[str] = "template"
    template: Template


STEP_TYPES: dict[str, type[_Step]] = {
    cls.kind: cls
    for cls in (
        AudioStep,
        DocumentStep,
        ImageStep,
        StickerStep,
        TemplateStep,
        TextStep,
        VideoStep,
    )
}


def step_kind(value: Any) -> str | None:
    """The one message type a step names, or None (zero or several: an error)."""
    if isinstance(value, _Step):
        return value.kind
    if not isinstance(value, dict):
        return None
    kinds = [key for key in value if key in STEP_TYPES]
    return kinds[0] if len(kinds) == 1 else None


Step = Annotated[
    Annotated[AudioStep, Tag("audio")]
    | Annotated[DocumentStep, Tag("document")]
    | Annotated[ImageStep, Tag("image")]
    | Annotated[StickerStep, Tag("sticker")]
    | Annotated[TemplateStep, Tag("template")]
    | Annotated[TextStep, Tag("text")]
    | Annotated[VideoStep, Tag("video")],
    Discriminator(
        step_kind,
        custom_error_type="step_kind",
        custom_error_message=(
            "a step needs exactly one message type: audio, document, image, sticker, template,"
            " text or video"
        ),
    ),
]


class Flow(_Strict):
    """A campaign: where to send, to whom, and the messages every recipient gets in order."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"title": "flowrun flow", "$id": "https://flowrun.dev/flow.schema.json"},
    )

    version: Literal[1] = Field(description="Version of the flow format; only 1 exists.")
    name: str | None = Field(
        None, min_length=1, description="Default: the file name without extension."
    )
    api: Api
    settings: Settings = Settings()
    vars: dict[str, Any] = Field(
        default_factory=dict, description="Free values for templates, as vars.NAME."
    )
    recipients: Recipients
    messages: list[Step] = Field(min_length=1, description="Steps every recipient gets, in order.")
