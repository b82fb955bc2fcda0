"""Every rule of the flow format, answered at the exact line and column a person wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import HEADER, RunFlow

STEP = "messages:\n  - text: {body: hi}\n"
PEOPLE = "recipients:\n  - phone: '+1 555 010 0001'\n"


def flow(body: str) -> str:
    return HEADER + body


def test_example_flow_is_valid(run_flowrun: RunFlow) -> None:
    result = run_flowrun(flow(PEOPLE + STEP))
    assert result.code == 0
    assert "flow.yaml: ok: 1 recipients, 1 steps, 1 messages" in result.out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\napi:\n  phone_number_id: '1'\n  token: '{{ env.T }}'\n"
            + PEOPLE
            + "mesages:\n  - text: {body: hi}\n",
            [
                "flow.yaml:1:1: missing key 'messages'",
                "flow.yaml:7:1: unknown key 'mesages'\n  hint: did you mean 'messages'?",
            ],
        ),
        (
            "version: 2\n",
            ["flow.yaml:1:10: unsupported flow version 2; this flowrun reads version 1"],
        ),
        ("", ["flow.yaml:1:1: the flow is empty"]),
        ("- a\n- b\n", ["flow.yaml:1:1: a flow must be a mapping (key: value lines), not a list"]),
    ],
)
def test_top_level(run_flowrun: RunFlow, text: str, expected: list[str]) -> None:
    result = run_flowrun(text)
    assert result.code == 2
    assert result.err.startswith("\n".join(expected))


def first_error(run_flowrun: RunFlow, text: str, **kwargs: object) -> str:
    result = run_flowrun(text, **kwargs)
    assert result.code == 2, result.out
    assert "Traceback" not in result.err
    return result.err_lines[0]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            "  - image: {link: 'https://c.example/a.jpg', id: abc}\n",
            "flow.yaml:8:5: give exactly one of id, link or file (found id and link)",
        ),
        (
            "  - image: {caption: hi}\n",
            "flow.yaml:8:5: give exactly one of id, link or file (found none)",
        ),
        (
            "  - audio: {link: 'https://c.example/a.ogg', caption: hi}\n",
            "flow.yaml:8:46: unknown key 'caption' in messages.0.audio",
        ),
        (
            "  - image: {id: abc, filename: a.jpg}\n",
            "flow.yaml:8:22: unknown key 'filename' in messages.0.image",
        ),
        (
            "  - image: {id: abc, provider: {name: cdn}}\n",
            "flow.yaml:8:5: provider goes only with link",
        ),
        (
            "  - image: {link: 'ftp://c.example/a.jpg'}\n",
            "flow.yaml:8:19: 'ftp://c.example/a.jpg' is not an http(s) link",
        ),
        (
            "  - image: {id: a}\n    video: {id: b}\n",
            "flow.yaml:8:5: a step has one message type, this one has 2: image, video",
        ),
        (
            "  - imgae: {id: a}\n",
            "flow.yaml:8:5: a step needs a message type (audio, document, image, sticker,"
            " template, text, video); did you mean 'image'?",
        ),
        (
            "  - text: {body: a}\n    name: x\n  - text: {body: b}\n    name: x\n",
            "flow.yaml:11:11: step name 'x' is already used by step 1",
        ),
        (
            "  - text: {body: 'Hi {{ recipient.surname }}'}\n",
            "flow.yaml:8:18: recipient has no field 'surname' (columns: phone) (first for the"
            " recipient at flow.yaml:6:12)",
        ),
        (
            "  - text: {body: 'Hi {{ recipient.name'}\n",
            "flow.yaml:8:18: template error: unexpected end of template, expected 'end of print"
            " statement'.",
        ),
        (
            "  - text: {body: hi}\n    when: recipient.lang ==\n",
            "flow.yaml:9:11: template error: unexpected 'end of template'",
        ),
        (
            "  - text: {body: hi}\n    when: recipient.lang == 'en'\n",
            "flow.yaml:9:11: recipient has no field 'lang' (columns: phone) (first for the"
            " recipient at flow.yaml:6:12)",
        ),
        (
            "  - text: {body: \"{{ ''.__class__.__mro__ }}\"}\n",
            "flow.yaml:8:18: not allowed in a flow template: access to attribute '__class__' of"
            " 'str' object is unsafe. (first for the recipient at flow.yaml:6:12)",
        ),
        (
            '  - text: {body: "{{ recipient._data }}"}\n',
            "flow.yaml:8:18: not allowed in a flow template: access to attribute '_data' of"
            " '_Fields' object is unsafe. (first for the recipient at flow.yaml:6:12)",
        ),
        (
            '  - text: {body: "{{ lipsum.__globals__ }}"}\n',
            "flow.yaml:8:18: 'lipsum' is undefined (first for the recipient at flow.yaml:6:12)",
        ),
        (
            "  - text: {body: \"{{ 'x' * 100000000 }}\"}\n",
            "flow.yaml:8:18: template exceeds a limit: '*' would make 100,000,000 characters;"
            " a value may hold 65,536 (first for the recipient at flow.yaml:6:12)",
        ),
        (
            "  - image: {link: '{{ recipient.phone }}'}\n",
            "flow.yaml:8:19: '15550100001' is not an http(s) link (first for the recipient at"
            " flow.yaml:6:12)",
        ),
        (
            "  - image: {link: 'https://x.example/a.jpg', caption: '{{ \"x\" * 2000 }}'}\n",
            "flow.yaml:8:55: caption is 2,000 characters; WhatsApp allows 1,024 (first for the"
            " recipient at flow.yaml:6:12)",
        ),
        (
            "  - video: {file: assets/missing.mp4}\n",
            "flow.yaml:8:19: file 'assets/missing.mp4' not found",
        ),
        (
            "  - image: {file: assets/wave.webp}\n",
            "flow.yaml:8:19: WhatsApp does not accept '.webp' files as image",
        ),
        (
            "  - sticker: {file: ../outside.webp}\n",
            "flow.yaml:8:21: '../outside.webp' is outside the flow's folder",
        ),
        (
            "  - document: {file: /etc/passwd}\n",
            "flow.yaml:8:22: '/etc/passwd' is outside the flow's folder",
        ),
        (
            "  - text: {body: '{{ -recipient.phone }}'}\n",
            "flow.yaml:8:18: template error: bad operand type for unary -: 'str' (first for the"
            " recipient at flow.yaml:6:12)",
        ),
        (
            "  - text: {body: '{{ 1 / 0 }}'}\n",
            "flow.yaml:8:18: template error: division by zero (first for the recipient at"
            " flow.yaml:6:12)",
        ),
        (
            "  - text: {body: ''}\n",
            "flow.yaml:8:18: body is empty after rendering (first for the recipient at"
            " flow.yaml:6:12)",
        ),
    ],
)
def test_message_rules(run_flowrun: RunFlow, steps: str, expected: str) -> None:
    text = HEADER + "recipients:\n  - phone: '+1 555 010 0001'\nmessages:\n" + steps
    assert first_error(run_flowrun, text) == expected


def test_rules_hint_where_a_key_belongs(run_flowrun: RunFlow) -> None:
    result = run_flowrun(flow(PEOPLE + "messages:\n  - image: {id: abc, filename: a.jpg}\n"))
    assert result.err.splitlines()[1] == "  hint: 'filename' is only for document messages"


@pytest.mark.parametrize(
    ("api", "steps", "expected"),
    [
        (
            "  phone_numer_id: '1'\n  token: '{{ env.T }}'\n",
            "  - text: {body: hi}\n",
            "hint: did you mean 'phone_number_id'?",
        ),
        (
            "  kind: onprem\n  base_url: https://x.example\n  logn: {}\n",
            "  - text: {body: hi}\n",
            "hint: did you mean 'login'?",
        ),
        (
            "  phone_number_id: '1'\n  token: '{{ env.T }}'\n",
            "  - template: {name: hi, language: en, bodyy: [a]}\n",
            "hint: did you mean 'body'?",
        ),
        (
            "  phone_number_id: '1'\n  token: '{{ env.T }}'\n",
            "  - template: {name: hi, language: en, header: {imgae: {id: a}}}\n",
            "hint: did you mean 'image'?",
        ),
        (
            "  phone_number_id: '1'\n  token: '{{ env.T }}'\n",
            "  - template: {name: hi, language: en, buttons: [{quick_replay: a}]}\n",
            "hint: did you mean 'quick_reply'?",
        ),
    ],
)
def test_did_you_mean_knows_both_dialects_and_templates(
    run_flowrun: RunFlow, api: str, steps: str, expected: str
) -> None:
    text = "version: 1\napi:\n" + api + PEOPLE + "messages:\n" + steps
    result = run_flowrun(text)
    assert result.code == 2
    assert expected in result.err


def test_an_unknown_api_kind_is_located(run_flowrun: RunFlow) -> None:
    text = "version: 1\napi:\n  kind: cluod\n" + PEOPLE + "messages:\n  - text: {body: a}\n"
    assert first_error(run_flowrun, text) == (
        "flow.yaml:3:9: kind must be cloud (the default) or onprem, got 'cluod'"
    )


def test_renamed_file_is_caught_by_its_bytes(run_flowrun: RunFlow, flowdir: Path) -> None:
    (flowdir / "assets" / "fake.jpg").write_bytes((flowdir / "assets" / "wave.webp").read_bytes())
    text = flow(PEOPLE + "messages:\n  - image: {file: assets/fake.jpg}\n")
    assert first_error(run_flowrun, text) == (
        "flow.yaml:8:19: 'assets/fake.jpg' does not look like image/jpeg (its first bytes say"
        " otherwise)"
    )


def test_all_problems_reported_in_one_pass(run_flowrun: RunFlow) -> None:
    text = """\
        version: 1
        api:
          phone_number_id: "106540352242922"
          token: secret-in-git
          tiemout: 3
        settings:
          concurrency: 0
          rate: fast
          retries: many
        recipients:
          - phone: '+1 555 010 0001'
        messages:
          - text: {body: hi, preview_url: maybe}
        """
    result = run_flowrun(text)
    assert result.code == 2
    assert result.err_lines == [
        "flow.yaml:4:10: the token is written in the file; flows live in git, tokens must not:"
        ' write token: "{{ env.WA_TOKEN }}" and set WA_TOKEN in the environment',
        "flow.yaml:5:3: unknown key 'tiemout' in api",
        "  hint: did you mean 'timeout'?",
        "flow.yaml:7:16: concurrency must be at least 1",
        "flow.yaml:8:9: rate 'fast' should look like 50/s or 300/min",
        "flow.yaml:9:12: retries: expected a whole number, got 'many'",
        "flow.yaml:13:35: preview_url: expected true or false, got 'maybe'",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\nversion: 1\n",
            "flow.yaml:2:1: duplicate key 'version' (first written on line 1)",
        ),
        (
            "version: 1\napi:\n\tbase_url: x\n",
            "flow.yaml:3:1: YAML syntax: found character '\\t' that cannot start any token",
        ),
        (
            "version: 1\nname: 'open\n",
            "flow.yaml:3:1: YAML syntax: found unexpected end of stream (while scanning a quoted"
            " scalar that starts at line 2, column 7)",
        ),
        (
            "version: 1\nname: a: b\n",
            "flow.yaml:2:8: YAML syntax: mapping values are not allowed here",
        ),
        ("version: 1\nvars: " + "[" * 5000 + "\n", "flow.yaml:2:70: nested deeper than 64 levels"),
        (
            "version: 1\nvars: !!python/object:os.system x\n",
            "flow.yaml:2:7: YAML tags such as !!python/object:os.system are not supported",
        ),
    ],
)
def test_yaml_problems(run_flowrun: RunFlow, text: str, expected: str) -> None:
    assert first_error(run_flowrun, text, dedent=False) == expected


def test_alias_bomb_is_refused_quickly(run_flowrun: RunFlow) -> None:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    error = first_error(run_flowrun, "\n".join(lines) + "\n", dedent=False)
    assert error.startswith("flow.yaml:6:")
    assert "aliases expand to more than 100,000 values" in error


def test_non_utf8_file(run_flowrun: RunFlow, flowdir: Path) -> None:
    run_flowrun("version: 1\n")
    (flowdir / "flow.yaml").write_bytes(b"version: 1\nname: caf\xe9\n")
    from click.testing import CliRunner

    from runner.cli import cli

    result = CliRunner().invoke(cli, ["validate", "flow.yaml"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == "flow.yaml:2:10: not UTF-8 text (byte 0xe9)"


def test_missing_env_is_a_warning_for_validate(run_flowrun: RunFlow) -> None:
    result = run_flowrun(flow(PEOPLE + STEP))
    assert result.code == 0
    assert (
        "flow.yaml:4:10: warning: environment variable WA_TOKEN is not set; a real run needs it"
        in result.err
    )


def test_leading_zero_numbers_stay_text(run_flowrun: RunFlow) -> None:
    text = flow("recipients:\n  - phone: 07911123456\n" + STEP)
    assert first_error(run_flowrun, text).startswith(
        "flow.yaml:6:12: phone '07911123456' has no country code (it starts with 0)"
    )


def test_media_size_limit(run_flowrun: RunFlow, flowdir: Path) -> None:
    big = b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(120 * 1024)
    (flowdir / "assets" / "big.webp").write_bytes(big)
    text = flow(PEOPLE + "messages:\n  - sticker: {file: assets/big.webp}\n")
    assert first_error(run_flowrun, text) == (
        "flow.yaml:8:21: 'assets/big.webp' is 120 KB; WhatsApp accepts sticker files up to 100 KB"
    )


def test_huge_single_line_is_refused_before_parsing(run_flowrun: RunFlow, flowdir: Path) -> None:
    run_flowrun("version: 1\n")
    (flowdir / "flow.yaml").write_bytes(b"version: 1\nname: " + b"x" * (50 * 1024 * 1024) + b"\n")
    from click.testing import CliRunner

    from runner.cli import cli

    result = CliRunner().invoke(cli, ["validate", "flow.yaml"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[:2] == [
        "flow.yaml:1:1: file is larger than 5 MB",
        "  hint: keep long recipient lists in a CSV file (recipients: {csv: contacts.csv})",
    ]


def test_templated_file_checked_per_recipient(run_flowrun: RunFlow) -> None:
    text = flow(
        "recipients:\n  - {phone: '+15550100001', pic: welcome}\n"
        "  - {phone: '+15550100002', pic: nope}\n"
        "messages:\n  - image: {file: 'assets/{{ recipient.pic }}.jpg'}\n"
    )
    assert first_error(run_flowrun, text) == (
        "flow.yaml:9:19: file 'assets/nope.jpg' not found (first for the recipient at"
        " flow.yaml:7:13)"
    )


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (
            "https://user:pass@cdn.example.com/a.jpg",
            "flow.yaml:9:19: the link to cdn.example.com carries credentials (user:password@);"
            " remove them",
        ),
        (
            "ftp://cdn.example.com/a.jpg",
            "flow.yaml:9:19: 'ftp://cdn.example.com/a.jpg' is not an http(s) link",
        ),
        ("file:///etc/passwd", "flow.yaml:9:19: 'file:///etc/passwd' is not an http(s) link"),
        (
            "https://{{ recipient.name }}@cdn.example.com/a.jpg",
            "flow.yaml:9:19: the link to cdn.example.com carries credentials (user:password@);"
            " remove them (first for the recipient at flow.yaml:6:12)",
        ),
    ],
)
def test_links_are_plain_http_without_credentials(
    run_flowrun: RunFlow, link: str, expected: str
) -> None:
    text = HEADER + "recipients:\n  - phone: '+1 555 010 0001'\n    name: a\nmessages:\n"
    text += f"  - image: {{link: '{link}'}}\n"
    assert first_error(run_flowrun, text) == expected
