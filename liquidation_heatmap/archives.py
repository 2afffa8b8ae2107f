"""Binance's archives: a file's sha256 and its check against Binance's .CHECKSUM, the digests remembered between
builds, and a zip made readable by DuckDB's read_csv without an unzipped copy where the checksum vouches for it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

from .source_file import SourceFile


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_status(path: Path, digest: str | None = None) -> str:
    """'ok', 'absent' or 'mismatch' against Binance's NAME.zip.CHECKSUM ("<sha256>  NAME.zip")."""
    checksum_file = path.with_name(path.name + ".CHECKSUM")
    if not checksum_file.exists():
        return "absent"
    expected = checksum_file.read_text(errors="replace").split()
    return "ok" if expected and expected[0].lower() == (digest or sha256(path)) else "mismatch"


class Checksums:
    """sha256 of each file, remembered by path, size and modification time: an unchanged file is not reread."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.known = json.loads(path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.lock = threading.Lock()

    def of(self, path: Path) -> str:
        stat, key = path.stat(), str(path.resolve())
        seen = self.known.get(key)
        if seen and seen[:2] == [stat.st_size, stat.st_mtime_ns]:
            return seen[2]
        digest = sha256(path)
        with self.lock:
            self.known[key] = [stat.st_size, stat.st_mtime_ns, digest]
        return digest

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.known, indent=0, sort_keys=True))

    def prune(self, cache: Path) -> int:
        """Forget the files that no longer exist, and remove the staged copies that no known file holds
        (a removed file's, a changed file's earlier bytes). Returns how many were removed. (build.py locks
        the cache folder, so what was read at the start is all there is: no other build writes it meanwhile.)"""
        self.known = {path: seen for path, seen in self.known.items() if Path(path).exists()}
        held = {digest[:24] for _, _, digest in self.known.values()}
        removed = 0
        for record in cache.glob("*/*/*.json"):
            if record.stem.rsplit("-", 1)[-1] not in held:
                record.with_suffix(".parquet").unlink(missing_ok=True)
                record.unlink()
                removed += 1
        return removed


def write_atomic(path: Path, text: str) -> None:
    """The file's new text, whole or not at all: written beside it, on disk, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def gzip_of(path: Path, member: zipfile.ZipInfo, dest: Path) -> None:
    """Rewrap a zip member's deflate stream as a gzip file, which DuckDB reads itself (RFC 1952: a 10-byte
    header, the same deflate data, then CRC-32 and size): no unzipped copy on disk and one pass fewer."""
    with path.open("rb") as src, dest.open("wb") as dst:
        src.seek(member.header_offset)
        local = src.read(30)   # the local header: its name and extra field lengths may differ from the central's
        src.seek(member.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little"))
        dst.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        left = member.compress_size
        while left:
            block = src.read(min(left, 1 << 20))
            if not block:
                raise EOFError(f"{member.filename} ends early")
            dst.write(block)
            left -= len(block)
        dst.write(member.CRC.to_bytes(4, "little") + (member.file_size & 0xFFFFFFFF).to_bytes(4, "little"))


def same_as_zip(csv_path: Path, zip_path: Path) -> bool:
    """Whether a CSV holds the same bytes as the one CSV inside a zip (by the zip's CRC-32 and size)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.infolist() if m.filename.lower().endswith(".csv")]
    except (zipfile.BadZipFile, OSError):
        return False
    if len(members) != 1 or members[0].file_size != csv_path.stat().st_size:
        return False
    crc = 0
    with csv_path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return crc == members[0].CRC


# Errors of the machine, not of a file's bytes: full, over a size limit, over quota, read-only, refused, failing.
DISK_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def unpack(info: SourceFile, tmp: Path, n_columns: int | None) -> dict:
    """Make one file readable by read_csv and look at its first line. Sets status, problem, has_header and csv_path.

    A zip whose sha256 matches Binance's CHECKSUM is handed to DuckDB as gzip; any other zip is unzipped,
    so that zipfile checks its CRC (DuckDB does not check a gzip's): damaged bytes are never read as rows."""
    path = info.path
    info = replace(info, status="quarantined", problem=None, detail=None, has_header=None, csv_path=None)
    csv_path = path
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if m.filename.lower().endswith(".csv")]
                if len(members) != 1:
                    raise zipfile.BadZipFile(f"expected one CSV inside, found {len(members)}")
                with archive.open(members[0]) as src:
                    first_line = src.readline().decode("utf-8", errors="replace")
                if info.checksum == "ok" and members[0].compress_type == zipfile.ZIP_DEFLATED:
                    csv_path = tmp / f"{info.sha256}.csv.gz"
                    gzip_of(path, members[0], csv_path)
                else:
                    csv_path = tmp / f"{info.sha256}.csv"
                    with archive.open(members[0]) as src, csv_path.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        # (zipfile raises NotImplementedError for a method or version it lacks, RuntimeError for an encrypted member,
        # OSError for a seek a damaged directory points before the file's start)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as error:
            if isinstance(error, OSError) and error.errno in DISK_ERRORS:
                raise   # the disk's fault, not the file's: the build stops (a quarantine would be kept in the cache)
            return replace(info, problem="unreadable_zip", detail=f"{path.name}: {error}")
    else:
        with path.open(encoding="utf-8", errors="replace") as f:
            first_line = f.readline()
    first_line = first_line.lstrip("\ufeff").strip()
    if not first_line:
        return replace(info, problem="empty_file", detail=f"{path.name} holds no rows")
    fields = [field.strip().strip('"') for field in first_line.split(",")]
    # Binance files have a header in some periods and not in others: a header's fields are column names; a data
    # row's are numbers, 'YYYY-MM-DD ...' times and a symbol. So a header has no field that begins with a digit, and
    # a data row with one damaged field is still read as a row (and reported), not skipped as a header.
    has_header = not any(field[:1].isdigit() for field in fields)
    if has_header and n_columns and len(fields) != n_columns:
        return replace(info, problem="unexpected_columns",
                       detail=f"{path.name}: header has {len(fields)} columns ({first_line[:120]}), "
                              f"a {info.data_type} file has {n_columns}")
    return replace(info, status="loaded", has_header=has_header, csv_path=str(csv_path))
