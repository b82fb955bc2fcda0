"""What WhatsApp accepts as media, and the check of a local file against it.

The limits come from Meta's media reference, the same on both API dialects except stickers
(On-Premises: static only, 100 KB):
docs/whatsapp-api.md#media-types-and-limits,
which names each source. Checking them before a run matters: the API would
reject the upload, or worse accept the send and fail it later by webhook.

The MIME type comes from the file's extension through an explicit table, not `mimetypes` (whose
answers depend on the machine's /etc/mime.types), and is confirmed by the file's first bytes
where the format has a signature, so a PNG renamed to .jpg is caught here, not by a customer.
"""

from __future__ import annotations

import difflib
import hashlib
import stat
from dataclasses import dataclass, field
from pathlib import Path

KB = 1024
MB = 1024 * 1024

MEDIA_TYPES = ("audio", "document", "image", "sticker", "video")

# type -> (allowed MIME types, size limit in bytes)
LIMITS: dict[str, tuple[frozenset[str], int]] = {
    "image": (frozenset({"image/jpeg", "image/png"}), 5 * MB),
    "video": (frozenset({"video/mp4", "video/3gpp"}), 16 * MB),
    "audio": (
        frozenset({"audio/aac", "audio/mp4", "audio/mpeg", "audio/amr", "audio/ogg"}),
        16 * MB,
    ),
    "document": (
        frozenset(
            {
                "application/pdf",
                "text/plain",
                "application/msword",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.ms-excel",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            }
        ),
        100 * MB,
    ),
    "sticker": (frozenset({"image/webp"}), 100 * KB),
}

MIME_BY_EXTENSION = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".3gp": "video/3gpp",
    ".aac": "audio/aac",
    ".m4a": "audio/mp4",
    ".mp3": "audio/mpeg",
    ".amr": "audio/amr",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".pdf": "application/pdf",
    ".txt": "text/plain",
    ".doc": "application/msword",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xls": "application/vnd.ms-excel",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".ppt": "application/vnd.ms-powerpoint",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}

_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy Office files
_ZIP = b"PK\x03\x04"  # Office Open XML files


def _signature_matches(mime: str, head: bytes) -> bool | None:
    """Whether the first bytes fit `mime`; None where the format has no reliable signature."""
    checks = {
        "image/jpeg": head.startswith(b"\xff\xd8\xff"),
        "image/png": head.startswith(b"\x89PNG\r\n\x1a\n"),
        "image/webp": head[:4] == b"RIFF" and head[8:12] == b"WEBP",
        "video/mp4": head[4:8] == b"ftyp",
        "video/3gpp": head[4:8] == b"ftyp",
        "audio/mp4": head[4:8] == b"ftyp",
        "audio/ogg": head.startswith(b"OggS"),
        "audio/amr": head.startswith(b"#!AMR"),
        "application/pdf": head.startswith(b"%PDF-"),
        "application/msword": head.startswith(_OLE),
        "application/vnd.ms-excel": head.startswith(_OLE),
        "application/vnd.ms-powerpoint": head.startswith(_OLE),
    }
    if mime in checks:
        return checks[mime]
    if mime.startswith("application/vnd.openxmlformats"):
        return head.startswith(_ZIP)
    return None


@dataclass(frozen=True, slots=True)
class LocalMedia:
    """A checked local file, ready to upload: what the executor needs, computed once."""

    path: Path
    mime: str
    size: int
    sha256: str
    relative: str = field(default="", compare=False)  # as the flow names it, for messages


class MediaError(ValueError):
    """A local file that WhatsApp would not accept; the message says why and what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def resolve_inside(base: Path, relative: str) -> Path:
    """`relative` under the flow's folder, refusing paths (or symlinks) that lead outside it:
    a flow must not be able to upload /etc/passwd or a private key to a third party."""
    if "\x00" in relative:  # no file system takes it
        raise MediaError(
            f"{relative!r} holds a NUL character", "a file name cannot contain one; check the path"
        )
    root = base.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise MediaError(
            f"'{relative}' is outside the flow's folder",
            "keep media files beside the flow (e.g. in an assets/ folder next to it)",
        )
    return target


def check_file(base: Path, relative: str, media_type: str) -> LocalMedia:
    """Check a local media file for `media_type` and hash its content (the upload key)."""
    path = resolve_inside(base, relative)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise MediaError(f"file '{relative}' not found", near_names(path, relative)) from None
    except OSError as exc:
        raise MediaError(f"cannot read '{relative}': {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise MediaError(f"'{relative}' is not a regular file")
    mime = _mime_for(relative, media_type)
    allowed, limit = LIMITS[media_type]
    if info.st_size == 0:
        raise MediaError(f"'{relative}' is empty")
    if info.st_size > limit:
        size, most = _size(info.st_size), _size(limit)
        if size == most:  # just over: rounded, it would read as the limit itself
            size, most = f"{info.st_size:,} bytes", f"{most} ({limit:,} bytes)"
        raise MediaError(
            f"'{relative}' is {size}; WhatsApp accepts {media_type} files up to {most}",
            "compress the file, or send it as a document" if media_type != "document" else None,
        )
    digest, head = _hash(path, relative)
    if _signature_matches(mime, head) is False:
        raise MediaError(
            f"'{relative}' does not look like {mime} (its first bytes say otherwise)",
            "check that the file's extension matches its real format",
        )
    assert mime in allowed
    return LocalMedia(path=path, mime=mime, size=info.st_size, sha256=digest, relative=relative)


def _mime_for(relative: str, media_type: str) -> str:
    allowed, _ = LIMITS[media_type]
    extension = Path(relative).suffix.lower()
    mime = MIME_BY_EXTENSION.get(extension)
    if mime is None or mime not in allowed:
        known = sorted(ext for ext, m in MIME_BY_EXTENSION.items() if m in allowed)
        raise MediaError(
            f"WhatsApp does not accept '{extension or 'no extension'}' files as {media_type}",
            f"{media_type} files may be: {', '.join(known)}",
        )
    return mime


def _hash(path: Path, relative: str) -> tuple[str, bytes]:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            head = handle.read(64 * KB)
            digest.update(head)
            while chunk := handle.read(MB):
                digest.update(chunk)
    except OSError as exc:
        raise MediaError(f"cannot read '{relative}': {exc.strerror}") from None
    return digest.hexdigest(), head[:16]


def near_names(path: Path, relative: str, suffix: str | None = None) -> str | None:
    """A hint for a file that is not there, naming files of the folder the flow named as the
    flow would write them: those with the same stem (tour.mp4 for tour.mov) or a close name
    (welcome.jpg for welcom.jpg, Logo.png for logo.png), else what the folder holds, the
    closest names first (of those ending in `suffix`, if given). A folder that is not there
    is said so."""
    folder = relative.replace("\\", "/").rpartition("/")[0]
    shown = f"{folder}/" if folder else ""
    where = shown or "the flow's folder"
    try:
        names = [p.name for p in path.parent.iterdir() if not p.name.startswith(".")]
    except FileNotFoundError:
        return f"there is no folder '{folder}' beside the flow" if folder else None
    except OSError:
        return None
    if suffix is not None:
        names = [name for name in names if name.lower().endswith(suffix)]
    if not names:
        return f"{where} holds no {suffix} file" if suffix else f"{where} is empty"
    close = sorted(n for n in names if Path(n).stem == path.stem)
    close = close or difflib.get_close_matches(path.name, names, n=3, cutoff=0.75)
    close = close or [n for n in names if n.lower() == path.name.lower()]
    if close:
        return "did you mean " + " or ".join(f"'{shown}{name}'" for name in close) + "?"
    ranked = sorted(names, key=lambda n: -difflib.SequenceMatcher(None, path.name, n).ratio())
    listed = ", ".join(ranked[:NAMES_LISTED]) + (", ..." if len(ranked) > NAMES_LISTED else "")
    return f"no name is close; {where} holds: {listed}"


NAMES_LISTED = 8  # the closest names of a folder a hint lists


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / KB:.0f} KB"


def read_checked(media: LocalMedia) -> bytes:
    """The file's bytes for an upload: exactly the bytes that were checked, or MediaError.

    Between validation and upload the file may have been replaced (by a symlink leading out of
    the flow's folder, say). What leaves is what was checked: the same size and SHA-256 (the
    upload cache's key, so a stranger's bytes can never be filed under the genuine file's
    hash). At most one byte past the checked size is read."""
    changed = f"'{media.relative}' changed since it was checked"
    try:
        with media.path.open("rb") as handle:
            data = handle.read(media.size + 1)
    except OSError as exc:
        raise MediaError(f"{changed} ({exc.strerror})", "run again to check it anew") from None
    if len(data) != media.size or hashlib.sha256(data).hexdigest() != media.sha256:
        raise MediaError(changed, "run again to check it anew")
    return data


class LocalFiles:
    """The local files of one flow, each checked once (by the path as written: no path
    arithmetic per recipient), remembered up to a bound so that a templated `file:` that names
    a different file per recipient cannot grow memory without end."""

    REMEMBERED = 10_000

    def __init__(self, base: Path) -> None:
        self.base = base
        self._checked: dict[str, LocalMedia | MediaError] = {}

    def check(self, relative: str, media_type: str) -> LocalMedia:
        """The checked file; raises MediaError (remembered too: a missing file is looked up
        once, not once per recipient)."""
        checked = self._checked.get(relative)
        if checked is None:
            try:
                checked = check_file(self.base, relative, media_type)
            except MediaError as exc:
                checked = exc
            if len(self._checked) < self.REMEMBERED:
                self._checked[relative] = checked
        if isinstance(checked, MediaError):
            raise checked
        return checked

    def uploads(self) -> list[LocalMedia]:
        """The distinct files checked so far (by content), in first-use order."""
        seen: dict[str, LocalMedia] = {}
        for checked in self._checked.values():
            if isinstance(checked, LocalMedia):
                seen.setdefault(checked.sha256, checked)
        return list(seen.values())
