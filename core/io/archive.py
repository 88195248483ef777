"""Safe extraction of a dataset .zip (the Data page's evaluate-by-upload). An uploaded archive is untrusted: every
member is checked before anything is written (no absolute path, no `..`, no link or device, no encryption, a bounded
count, a bounded declared size and compression ratio), then streamed member by member into a fresh folder, counting
the bytes actually written against what each member declares instead of trusting its header. A refusal is one
sentence (ArchiveError) and removes the fresh folder: nothing is left behind, inside or outside it."""
from __future__ import annotations

import lzma
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

MAX_BYTES = 500 << 20   # declared uncompressed total: about a thousand 512 x 512 DICOM slices
MAX_MEMBERS = 20_000    # files and folders
MAX_RATIO = 100         # declared over compressed size: CT data packs a few times smaller, a zip bomb a thousand
CHUNK = 1 << 20
SKIPPED = "__MACOSX"    # macOS Finder's resource forks: not data, and they would hide the archive's one top folder
# A damaged member or an unsupported compression (zipfile's own errors), or a file that cannot be written.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, OSError)


class ArchiveError(ValueError):
    """Why an archive was refused or could not be extracted, in one sentence for the user."""


def shown(name: str) -> str:
    """A member's name for a sentence: quoted, control characters escaped, long names cut."""
    return repr(name if len(name) <= 80 else name[:80] + "…")


def member_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """A member's path as folder names, refused when it is absolute or climbs out with `..`. Backslashes count as
    separators (Windows tools write them), so no name means one thing here and another to the next reader."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or PureWindowsPath(name).drive:
        raise ArchiveError(f"Refused: the archive's member {shown(info.filename)} has an absolute path.")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise ArchiveError(f"Refused: the archive's member {shown(info.filename)} climbs out of its folder with '..'.")
    return parts


def check_kind(info: zipfile.ZipInfo) -> None:
    """Refuse a member that is not a plain file or folder (its Unix mode in the high bits of external_attr) or that
    is encrypted."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"Refused: the archive's member {shown(info.filename)} is a symbolic link.")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveError(f"Refused: the archive's member {shown(info.filename)} is not a plain file or folder.")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"Refused: the archive's member {shown(info.filename)} is encrypted.")


def checked_members(archive: zipfile.ZipFile, max_bytes: int, max_members: int,
                    max_ratio: float) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """(member, its folder names) of every member to extract, all checked before anything is written."""
    infos = archive.infolist()
    if len(infos) > max_members:
        raise ArchiveError(f"Refused: the archive holds {len(infos):,} members, more than {max_members:,}.")
    members = []
    for info in infos:
        parts = member_parts(info)
        check_kind(info)
        if parts and parts[0] != SKIPPED:
            members.append((info, parts))
    declared = sum(info.file_size for info, _ in members)
    packed = sum(info.compress_size for info, _ in members)
    if declared > max_bytes:
        raise ArchiveError(f"Refused: the archive unpacks to {declared / 2**20:,.0f} MB, more than "
                           f"{max_bytes / 2**20:,.0f} MB.")
    if declared > max_ratio * max(packed, 1):
        raise ArchiveError(f"Refused: the archive unpacks {declared / max(packed, 1):,.0f} times larger than it is "
                           f"packed, more than {max_ratio:,.0f} times (a decompression bomb).")
    if all(info.is_dir() for info, _ in members):
        raise ArchiveError("The archive holds no files.")
    return members


def top_folder(members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]]) -> str | None:
    """The one folder every member lies in (a zipped dataset folder), else None (a zip of a folder's contents)."""
    tops = {parts[0] for _, parts in members}
    inside = all(len(parts) > 1 or info.is_dir() for info, parts in members)
    return next(iter(tops)) if len(tops) == 1 and inside else None


def write_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """One member streamed to `target`, never over an existing path; more bytes than its header declares is a
    refusal, whatever the header and the decompressor say."""
    try:
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as source, open(target, "xb") as out:
            written = 0
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise ArchiveError(f"Refused: the archive's member {shown(info.filename)} unpacks to more than "
                                       f"the {info.file_size:,} bytes it declares.")
                out.write(chunk)
    except FileExistsError as err:
        raise ArchiveError(f"Refused: the archive's member {shown(info.filename)} lands on the path of another "
                           "member.") from err
    except READ_ERRORS as err:
        raise ArchiveError(f"The archive's member {shown(info.filename)} could not be extracted "
                           f"({' '.join(str(err).split())}).") from err


def open_zip(archive: str | os.PathLike | BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ArchiveError("The file is not a readable .zip archive.") from err


def extract_dataset(archive: str | os.PathLike | BinaryIO, parent: str | Path, name: str, *,
                    max_bytes: int = MAX_BYTES, max_members: int = MAX_MEMBERS, max_ratio: float = MAX_RATIO) -> Path:
    """Extract a dataset .zip into a fresh folder made in `parent` and return the dataset folder inside it: the
    archive's one top folder, else a folder `name` (a plain folder name, such as the zip's stem) holding its members.
    The caller removes the returned folder's parent when done. Raises ArchiveError, leaving nothing, when the archive
    is refused or cannot be extracted."""
    fresh = Path(tempfile.mkdtemp(prefix="hemolens-upload-", dir=parent))
    try:
        with open_zip(archive) as zipped:
            members = checked_members(zipped, max_bytes, max_members, max_ratio)
            top = top_folder(members)
            root = fresh if top else fresh / name
            for info, parts in members:
                write_member(zipped, info, root.joinpath(*parts))
        return fresh / (top or name)
    except BaseException:   # a refusal, a damaged member, a full disk or an interrupt: nothing half-extracted stays
        shutil.rmtree(fresh, ignore_errors=True)
        raise
