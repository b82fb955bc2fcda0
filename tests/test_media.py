"""runner/media.py on its own, with real files in a temporary folder: the type a file's
extension names and its first bytes confirm, WhatsApp's size limits, and the flow's folder as
the only place files are read from (symlinks resolved)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from runner.media import KB, MB, LocalMedia, MediaError, check_file, resolve_inside

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00\x00"
ZIP = b"PK\x03\x04\x14\x00\x06\x00"


def ftyp(brand: bytes) -> bytes:
    return b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00"


ACCEPTED = [  # (media type, file name, first bytes, MIME type)
    ("image", "a.jpg", JPEG, "image/jpeg"),
    ("image", "a.jpeg", JPEG, "image/jpeg"),
    ("image", "a.png", PNG, "image/png"),
    ("video", "a.mp4", ftyp(b"mp42"), "video/mp4"),
    ("video", "a.3gp", ftyp(b"3gp4"), "video/3gpp"),
    ("audio", "a.aac", b"\xff\xf1\x50\x80", "audio/aac"),
    ("audio", "a.m4a", ftyp(b"M4A "), "audio/mp4"),
    ("audio", "a.mp3", b"ID3\x04\x00", "audio/mpeg"),
    ("audio", "a.amr", b"#!AMR\n", "audio/amr"),
    ("audio", "a.ogg", b"OggS\x00\x02", "audio/ogg"),
    ("audio", "a.opus", b"OggS\x00\x02", "audio/ogg"),
    ("document", "a.pdf", b"%PDF-1.7\n", "application/pdf"),
    ("document", "a.txt", b"Prices, as promised.\n", "text/plain"),
    ("document", "a.doc", OLE, "application/msword"),
    ("document", "a.xls", OLE, "application/vnd.ms-excel"),
    ("document", "a.ppt", OLE, "application/vnd.ms-powerpoint"),
    (
        "document",
        "a.docx",
        ZIP,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    (
        "document",
        "a.xlsx",
        ZIP,
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
    (
        "document",
        "a.pptx",
        ZIP,
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
    ("sticker", "a.webp", WEBP, "image/webp"),
]


NAMES = [name for _, name, _, _ in ACCEPTED]


def problem(base: Path, relative: str, media_type: str) -> tuple[str, str | None]:
    with pytest.raises(MediaError) as caught:
        check_file(base, relative, media_type)
    return str(caught.value), caught.value.hint


@pytest.mark.parametrize(("media_type", "name", "head", "mime"), ACCEPTED, ids=NAMES)
def test_each_accepted_format(
    tmp_path: Path, media_type: str, name: str, head: bytes, mime: str
) -> None:
    content = head + bytes(range(256)) * 4
    (tmp_path / name).write_bytes(content)
    assert check_file(tmp_path, name, media_type) == LocalMedia(
        path=tmp_path.resolve() / name,
        mime=mime,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
    )


def test_the_extension_is_read_whatever_its_case(tmp_path: Path) -> None:
    (tmp_path / "PHOTO.JPG").write_bytes(JPEG)
    assert check_file(tmp_path, "PHOTO.JPG", "image").mime == "image/jpeg"


def test_the_hash_covers_the_whole_file(tmp_path: Path) -> None:
    content = PNG + os.urandom(3 * MB + 12345)  # read in several chunks
    (tmp_path / "big.png").write_bytes(content)
    assert check_file(tmp_path, "big.png", "image").sha256 == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize(
    ("media_type", "name", "message", "hint"),
    [
        ("image", "a.webp", "WhatsApp does not accept '.webp' files as image", ".jpeg, .jpg, .png"),
        ("image", "a.gif", "WhatsApp does not accept '.gif' files as image", ".jpeg, .jpg, .png"),
        ("video", "a.mov", "WhatsApp does not accept '.mov' files as video", ".3gp, .mp4"),
        ("sticker", "a.png", "WhatsApp does not accept '.png' files as sticker", ".webp"),
        (
            "audio",
            "a.wav",
            "WhatsApp does not accept '.wav' files as audio",
            ".aac, .amr, .m4a, .mp3, .ogg, .opus",
        ),
        (
            "document",
            "README",
            "WhatsApp does not accept 'no extension' files as document",
            ".doc, .docx, .pdf, .ppt, .pptx, .txt, .xls, .xlsx",
        ),
    ],
)
def test_an_extension_whatsapp_does_not_take_for_that_type(
    tmp_path: Path, media_type: str, name: str, message: str, hint: str
) -> None:
    (tmp_path / name).write_bytes(b"whatever")
    assert problem(tmp_path, name, media_type) == (message, f"{media_type} files may be: {hint}")


@pytest.mark.parametrize(
    ("media_type", "name", "mime"),
    [(t, n, m) for t, n, _, m in ACCEPTED if n.rsplit(".", 1)[1] not in ("txt", "aac", "mp3")],
    ids=[n for n in NAMES if n.rsplit(".", 1)[1] not in ("txt", "aac", "mp3")],
)
def test_the_first_bytes_must_confirm_the_extension(
    tmp_path: Path, media_type: str, name: str, mime: str
) -> None:
    (tmp_path / name).write_bytes(b"<html>not what the name says</html>")
    assert problem(tmp_path, name, media_type) == (
        f"'{name}' does not look like {mime} (its first bytes say otherwise)",
        "check that the file's extension matches its real format",
    )


def test_a_png_renamed_to_jpg_is_caught(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(PNG)
    assert problem(tmp_path, "photo.jpg", "image")[0] == (
        "'photo.jpg' does not look like image/jpeg (its first bytes say otherwise)"
    )


@pytest.mark.parametrize(("name", "media_type"), [("a.txt", "document"), ("a.mp3", "audio")])
def test_formats_without_a_signature_take_any_bytes(
    tmp_path: Path, name: str, media_type: str
) -> None:
    (tmp_path / name).write_bytes(b"\x00\x01 anything")
    assert check_file(tmp_path, name, media_type).size == 11


def test_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    assert problem(tmp_path, "a.jpg", "image") == ("'a.jpg' is empty", None)


SAMPLES = {  # media type: a file name and first bytes of that type
    "image": ("a.jpg", JPEG),
    "video": ("a.mp4", ftyp(b"mp42")),
    "audio": ("a.ogg", b"OggS"),
    "document": ("a.pdf", b"%PDF-"),
    "sticker": ("a.webp", WEBP),
}


def sized(folder: Path, media_type: str, size: int) -> str:
    """A file of `size` bytes that starts like its type (sparse: cheap however large)."""
    name, head = SAMPLES[media_type]
    with (folder / name).open("wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return name


@pytest.mark.parametrize(("media_type", "limit"), [("image", 5 * MB), ("sticker", 100 * KB)])
def test_a_file_at_the_limit_is_accepted(tmp_path: Path, media_type: str, limit: int) -> None:
    name = sized(tmp_path, media_type, limit)
    assert check_file(tmp_path, name, media_type).size == limit


COMPRESS = "compress the file, or send it as a document"


@pytest.mark.parametrize(
    ("media_type", "size", "message", "hint"),
    [
        ("image", 6 * MB, "'a.jpg' is 6.0 MB; WhatsApp accepts image files up to 5.0 MB", COMPRESS),
        (
            "video",
            17 * MB,
            "'a.mp4' is 17.0 MB; WhatsApp accepts video files up to 16.0 MB",
            COMPRESS,
        ),
        (
            "audio",
            16 * MB + MB // 2,
            "'a.ogg' is 16.5 MB; WhatsApp accepts audio files up to 16.0 MB",
            COMPRESS,
        ),
        (
            "document",
            101 * MB,
            "'a.pdf' is 101.0 MB; WhatsApp accepts document files up to 100.0 MB",
            None,  # nothing bigger to send it as
        ),
        (
            "sticker",
            120 * KB,
            "'a.webp' is 120 KB; WhatsApp accepts sticker files up to 100 KB",
            COMPRESS,
        ),
    ],
)
def test_files_over_whatsapps_limits(
    tmp_path: Path, media_type: str, size: int, message: str, hint: str | None
) -> None:
    name = sized(tmp_path, media_type, size)
    assert problem(tmp_path, name, media_type) == (message, hint)


@pytest.mark.parametrize(
    ("media_type", "size", "message"),
    [
        (
            "sticker",
            100 * KB + 1,
            "'a.webp' is 102,401 bytes; WhatsApp accepts sticker files up to 100 KB (102,400"
            " bytes)",
        ),
        (
            "image",
            5 * MB + 40 * KB,
            "'a.jpg' is 5,283,840 bytes; WhatsApp accepts image files up to 5.0 MB (5,242,880"
            " bytes)",
        ),
    ],
)
def test_a_file_just_over_the_limit_does_not_read_as_the_limit(
    tmp_path: Path, media_type: str, size: int, message: str
) -> None:
    """Rounded, 100.001 KB reads '100 KB' and 5.04 MB '5.0 MB': 'is 100 KB; accepts up to
    100 KB' tells nobody what is wrong, so the sizes are given in bytes."""
    name = sized(tmp_path, media_type, size)
    assert problem(tmp_path, name, media_type)[0] == message


def test_a_missing_file_names_files_with_the_same_stem(tmp_path: Path) -> None:
    """Said as the flow would write them (issue 17: the closest names, else what is there)."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "tour.mp4").write_bytes(ftyp(b"mp42"))
    (tmp_path / "assets" / "tour.webm").write_bytes(b"x")
    (tmp_path / "assets" / "other.mov").write_bytes(b"x")
    assert problem(tmp_path, "assets/tour.mov", "video") == (
        "file 'assets/tour.mov' not found",
        "did you mean 'assets/tour.mp4' or 'assets/tour.webm'?",
    )
    assert problem(tmp_path, "assets/tuor.mp4", "video") == (
        "file 'assets/tuor.mp4' not found",
        "did you mean 'assets/tour.mp4'?",
    )
    assert problem(tmp_path, "assets/TOUR.MP4", "video") == (
        "file 'assets/TOUR.MP4' not found",
        "did you mean 'assets/tour.mp4'?",
    )
    assert problem(tmp_path, "assets/intro.mp4", "video") == (
        "file 'assets/intro.mp4' not found",
        "no name is close; assets/ holds: tour.mp4, other.mov, tour.webm",
    )
    assert problem(tmp_path, "nowhere/intro.mp4", "video") == (
        "file 'nowhere/intro.mp4' not found",
        "there is no folder 'nowhere' beside the flow",
    )


def test_only_regular_files(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    assert problem(tmp_path, "folder.jpg", "image") == ("'folder.jpg' is not a regular file", None)
    os.mkfifo(tmp_path / "pipe.mp3")  # reading it would wait for ever
    assert problem(tmp_path, "pipe.mp3", "audio") == ("'pipe.mp3' is not a regular file", None)


OUTSIDE_HINT = "keep media files beside the flow (e.g. in an assets/ folder next to it)"


@pytest.fixture
def flow_folder(tmp_path: Path) -> Path:
    """A flow's folder, with a JPEG beside it (outside it) and one inside."""
    (tmp_path / "secret.jpg").write_bytes(JPEG)
    folder = tmp_path / "flow"
    (folder / "assets").mkdir(parents=True)
    (folder / "assets" / "a.jpg").write_bytes(JPEG)
    return folder


@pytest.mark.parametrize("relative", ["../secret.jpg", "assets/../../secret.jpg"])
def test_paths_leading_outside_are_refused(flow_folder: Path, relative: str) -> None:
    assert problem(flow_folder, relative, "image") == (
        f"'{relative}' is outside the flow's folder",
        OUTSIDE_HINT,
    )


def test_an_absolute_path_is_refused(flow_folder: Path) -> None:
    absolute = str(flow_folder.parent / "secret.jpg")
    assert (
        problem(flow_folder, absolute, "image")[0] == f"'{absolute}' is outside the flow's folder"
    )
    assert problem(flow_folder, "/etc/passwd", "document")[0] == (
        "'/etc/passwd' is outside the flow's folder"
    )


def test_symlinks_leading_outside_are_refused(flow_folder: Path) -> None:
    (flow_folder / "assets" / "link.jpg").symlink_to(flow_folder.parent / "secret.jpg")
    (flow_folder / "elsewhere").symlink_to(flow_folder.parent, target_is_directory=True)
    (flow_folder / "dangling.jpg").symlink_to(flow_folder.parent / "gone.jpg")
    for relative in ("assets/link.jpg", "elsewhere/secret.jpg", "dangling.jpg"):
        assert problem(flow_folder, relative, "image") == (
            f"'{relative}' is outside the flow's folder",
            OUTSIDE_HINT,
        )


def test_paths_and_symlinks_that_stay_inside_are_followed(flow_folder: Path) -> None:
    target = flow_folder.resolve() / "assets" / "a.jpg"
    (flow_folder / "same.jpg").symlink_to("assets/a.jpg")
    (flow_folder / "media").symlink_to("assets", target_is_directory=True)
    for relative in ("assets/a.jpg", "./assets/../assets/a.jpg", "same.jpg", "media/a.jpg"):
        assert resolve_inside(flow_folder, relative) == target
        assert check_file(flow_folder, relative, "image").path == target


def test_a_flow_folder_reached_through_a_symlink(flow_folder: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(flow_folder, target_is_directory=True)
    assert check_file(alias, "assets/a.jpg", "image").path == flow_folder.resolve() / "assets/a.jpg"
    assert problem(alias, "../secret.jpg", "image")[0] == (
        "'../secret.jpg' is outside the flow's folder"
    )


def test_a_nul_character_in_a_path_is_a_located_mistake(flow_folder: Path) -> None:
    """The operating system cannot take it (Python raised ValueError: exit 3 with a crash log)."""
    with pytest.raises(MediaError, match=r"'assets/we\\x00lcome.jpg' holds a NUL character"):
        check_file(flow_folder, "assets/we\x00lcome.jpg", "image")


def test_an_upload_reads_exactly_the_bytes_that_were_checked(flow_folder: Path) -> None:
    from runner.media import read_checked

    checked = check_file(flow_folder, "assets/a.jpg", "image")
    assert len(read_checked(checked)) == checked.size
    original = checked.path.read_bytes()
    checked.path.write_bytes(original[:-1] + b"\x01")  # same size, other bytes
    with pytest.raises(MediaError, match=r"'assets/a\.jpg' changed since it was checked"):
        read_checked(checked)
    checked.path.write_bytes(original + b"more")
    with pytest.raises(MediaError, match="changed since it was checked"):
        read_checked(checked)
