"""Properties of ingestion (stage.py), over random Binance files (hypothesis), each staged for real with DuckDB
in a folder and cache of its own:

- a valid file, whatever its container (csv, zip, zip with its .CHECKSUM) and whether it has a header row, is
  staged as exactly its rows: Binance's columns, the same count, the same values bit for bit, in file order;
- a damaged zip is never ingested as different numbers: it is quarantined (naming the file), its damaged rows
  are reported, or its rows are staged unchanged;
- a plain CSV with a cut line or a letter in a number is staged without that row, which is reported with its line.

Generated rows are realistic: times inside the file's named period, keys unique and rising, prices > 0, bars
with low <= open, close <= high. Numbers are decimal text, which must read as float(text) does."""

from __future__ import annotations

import calendar
import datetime as dt
import tempfile
import zipfile
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from liquidation_heatmap import archives, files, stage
from liquidation_heatmap.source_file import SourceFile

DAY_MS = 86_400_000
MAX_ROWS = 25
SYMBOLS = ("BTCUSDT", "ETHUSDT", "1000PEPEUSDT")
DAYS = st.dates(dt.date(2020, 1, 1), dt.date(2026, 12, 31))
# (each example stages for real: ~0.8 s a staging on 2 cores; a checksum mismatch is quarantined unread)
SETTINGS = {"deadline": None, "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large]}


def timestamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def ratio(text: str) -> float | None:
    """A metrics ratio: empty, plain or quoted, on whole days."""
    return None if text in ("", '""') else float(text)


def boolean(text: str) -> bool:
    return {"true": True, "false": False}[text]


# Binance's columns of each type, each with how its text reads.
COLUMNS = {
    "aggTrades": {"agg_trade_id": int, "price": float, "quantity": float, "first_trade_id": int, "last_trade_id": int,
                  "transact_time": int, "is_buyer_maker": boolean},
    "klines": {"open_time": int, "open": float, "high": float, "low": float, "close": float, "volume": float,
               "close_time": int, "quote_volume": float, "count": int, "taker_buy_volume": float,
               "taker_buy_quote_volume": float, "ignore": str},
    "metrics": {"create_time": timestamp, "symbol": str, "sum_open_interest": float, "sum_open_interest_value": float,
                "count_toptrader_long_short_ratio": ratio, "sum_toptrader_long_short_ratio": ratio,
                "count_long_short_ratio": ratio, "sum_taker_long_short_vol_ratio": ratio},
    "fundingRate": {"calc_time": int, "funding_interval_hours": int, "last_funding_rate": float},
}
NUMBERS = {data_type: [i for i, read in enumerate(columns.values()) if read in (int, float, timestamp, ratio)]
           for data_type, columns in COLUMNS.items()}   # the fields a letter cannot be part of


@dataclass(frozen=True)
class BinanceFile:
    """One file as Binance publishes it: its rows as text, in a csv or a zip (with or without its .CHECKSUM)."""
    data_type: str
    symbol: str
    period: str                          # YYYY-MM-DD (a daily file) or YYYY-MM (a monthly one)
    rows: tuple[tuple[str, ...], ...]
    header: bool
    container: str = "zip+CHECKSUM"      # csv, zip, zip+CHECKSUM
    stored: bool = False                 # a zip's CSV stored, not deflated
    final_newline: bool = True

    @property
    def interval(self) -> str | None:
        return "1m" if self.data_type == "klines" else None

    @property
    def name(self) -> str:
        extension = "csv" if self.container == "csv" else "zip"
        return f"{self.symbol}-{self.interval or self.data_type}-{self.period}.{extension}"

    @property
    def folder(self) -> Path:
        """Vision's layout: data/futures/um/{daily|monthly}/{type}/{SYMBOL}/[{interval}/]."""
        every = "daily" if len(self.period) == 10 else "monthly"
        return Path("data/futures/um", every, self.data_type, self.symbol, self.interval or "")

    def csv_text(self, rows: tuple[tuple[str, ...], ...] | None = None) -> str:
        lines = ([",".join(COLUMNS[self.data_type])] if self.header else []) + [",".join(row) for row in rows or self.rows]
        return "\n".join(lines) + ("\n" if self.final_newline else "")

    def write(self, root: Path, rows: tuple[tuple[str, ...], ...] | None = None) -> Path:
        """The file under root, in Vision's layout; returns its path."""
        path = root / self.folder / self.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.container == "csv":
            path.write_text(self.csv_text(rows))
            return path
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if self.stored else zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(path.stem + ".csv", self.csv_text(rows))
        if self.container == "zip+CHECKSUM":
            path.with_name(path.name + ".CHECKSUM").write_text(f"{archives.sha256(path)}  {path.name}\n")
        return path

    def line(self, index: int) -> int:
        """The 1-based line of rows[index] in the CSV, header included."""
        return index + 1 + self.header

    def expected(self, rows: tuple[tuple[str, ...], ...] | None = None) -> list[tuple]:
        """The rows as staging must read them: each field as Python reads its text."""
        return [tuple(read(text) for read, text in zip(COLUMNS[self.data_type].values(), row, strict=True))
                for row in (self.rows if rows is None else rows)]


# ---------------------------------------------------------------- valid files


def epoch_ms(day: dt.date) -> int:
    return calendar.timegm(day.timetuple()) * 1000


def decimals(low, high, places: int) -> st.SearchStrategy[str]:
    """Decimal text with `places` digits after the point (trailing zeros kept, as Binance writes them)."""
    return st.decimals(Decimal(low), Decimal(high), places=places, allow_nan=False, allow_infinity=False) \
        .map(lambda value: format(value, "f"))


@st.composite
def prices(draw) -> st.SearchStrategy[str]:
    """One file's prices: > 0, of one scale (from 0.001 to 100,000), within 50x of each other."""
    scale = draw(st.integers(-3, 5))
    level = Decimal(10) ** scale
    return decimals(level, 50 * level, draw(st.integers(max(0, -scale), 8)))


@st.composite
def positive(draw, high) -> st.SearchStrategy[str]:
    places = draw(st.integers(0, 8))
    return decimals(Decimal(10) ** -places, high, places)


def sorted_unique(values: st.SearchStrategy[int]) -> st.SearchStrategy[list[int]]:
    return st.lists(values, min_size=1, max_size=MAX_ROWS, unique=True).map(sorted)


@st.composite
def file_options(draw, containers) -> dict:
    return {"symbol": draw(st.sampled_from(SYMBOLS)), "header": draw(st.booleans()),
            "container": draw(st.sampled_from(containers)), "stored": draw(st.booleans()),
            "final_newline": draw(st.booleans())}


@st.composite
def agg_trades_files(draw, containers=("csv", "zip", "zip+CHECKSUM")) -> BinanceFile:
    """A day of aggregated trades: ids and trade ids rising, times inside the day, never falling."""
    day = draw(DAYS)
    n = draw(st.integers(1, MAX_ROWS))
    times = sorted(draw(st.lists(st.integers(epoch_ms(day), epoch_ms(day) + DAY_MS - 1), min_size=n, max_size=n)))
    price, quantity = draw(prices()), draw(positive(1000))
    rows, agg_id, trade_id = [], draw(st.integers(1, 10**10)), draw(st.integers(1, 10**10))
    for time in times:
        trades = draw(st.integers(1, 5))
        rows.append((str(agg_id), draw(price), draw(quantity), str(trade_id), str(trade_id + trades - 1), str(time),
                     draw(st.sampled_from(["true", "false"]))))
        agg_id += draw(st.integers(1, 1000))   # (aggTrades have id gaps on some days)
        trade_id += trades + draw(st.integers(0, 3))
    return BinanceFile("aggTrades", period=day.isoformat(), rows=tuple(rows), **draw(file_options(containers)))


@st.composite
def klines_files(draw, containers=("csv", "zip", "zip+CHECKSUM")) -> BinanceFile:
    """A day of 1-minute bars: each opens on a minute of the day and closes 1 ms before the next; low <= open,
    close <= high; taker volumes within the bar's."""
    day = draw(DAYS)
    price, places = draw(prices()), draw(st.integers(0, 6))
    rows = []
    for minute in draw(sorted_unique(st.integers(0, 1439))):
        low, a, b, high = sorted(draw(st.lists(price, min_size=4, max_size=4)), key=Decimal)
        opened, closed = (a, b) if draw(st.booleans()) else (b, a)
        volume, quote_volume = draw(decimals(0, 10**6, places)), draw(decimals(0, 10**10, places))
        open_time = epoch_ms(day) + minute * 60_000
        rows.append((str(open_time), opened, high, low, closed, volume, str(open_time + 59_999), quote_volume,
                     str(draw(st.integers(0, 10**6))), draw(decimals(0, volume, places)),
                     draw(decimals(0, quote_volume, places)), "0"))
    return BinanceFile("klines", period=day.isoformat(), rows=tuple(rows), **draw(file_options(containers)))


@st.composite
def metrics_files(draw, containers=("csv", "zip", "zip+CHECKSUM")) -> BinanceFile:
    """A day of 5-minute metrics, from 00:00 up to the next day's 00:00 (end-of-period labels): open interest
    > 0, ratios as numbers or, on a whole day, empty or quoted empty; numbers padded with zeros as Binance does."""
    day = draw(DAYS)
    options = draw(file_options(containers))
    zeros = "0" * draw(st.integers(0, 10))
    interest, value = draw(positive(10**9)), draw(positive(10**11))
    ratios = draw(st.one_of(positive(100), st.just(st.just("")), st.just(st.just('""'))))   # (a strategy)
    rows = []
    for mark in draw(sorted_unique(st.integers(0, 288))):
        time = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=5 * mark)
        rows.append((time.strftime("%Y-%m-%d %H:%M:%S"), options["symbol"],
                     *(number + (zeros if "." in number else "") for number in (draw(interest), draw(value))),
                     *(draw(ratios) for _ in range(4))))
    return BinanceFile("metrics", period=day.isoformat(), rows=tuple(rows), **options)


@st.composite
def funding_files(draw, containers=("csv", "zip", "zip+CHECKSUM")) -> BinanceFile:
    """A month of funding rates, one every 1, 4 or 8 hours (a few ms after the hour), |rate| < 3 %."""
    day = draw(DAYS)
    hours = draw(st.sampled_from([1, 4, 8]))
    marks = calendar.monthrange(day.year, day.month)[1] * 24 // hours
    start, rate = epoch_ms(day.replace(day=1)), decimals(Decimal("-0.03"), Decimal("0.03"), draw(st.integers(4, 8)))
    rows = tuple((str(start + mark * hours * 3_600_000 + draw(st.integers(0, 999))), str(hours), draw(rate))
                 for mark in draw(sorted_unique(st.integers(0, marks - 1))))
    return BinanceFile("fundingRate", period=day.strftime("%Y-%m"), rows=rows, **draw(file_options(containers)))


FILES = (agg_trades_files, klines_files, metrics_files, funding_files)


def any_file(containers) -> st.SearchStrategy[BinanceFile]:
    return st.one_of(*(files(containers) for files in FILES))


# ---------------------------------------------------------------- staging


def stage_in(folder: Path, paths: list[Path]) -> dict[str, SourceFile]:
    """Stage files found under folder/data (as a build finds them) into folder/cache: each one's record, by name."""
    data = folder / "data"
    infos = [replace(files.parse_file_name(path), name=str(path.relative_to(data))) for path in paths]
    return {Path(staged.name).name: staged
            for staged in stage.stage_files(infos, folder / "cache", 1, 512, lambda message: None)}


def staged_rows(staged: dict) -> tuple[list[str], list[tuple]]:
    """The columns and rows of a file's staged Parquet, in file order."""
    with duckdb.connect() as con:
        result = con.execute("SELECT * EXCLUDE (file_row_number) FROM read_parquet(?, file_row_number = true) "
                             "ORDER BY file_row_number", [staged.staged_path])
        return [column[0] for column in result.description], result.fetchall()


def bits(rows: list[tuple]) -> list[tuple]:
    """Rows with each float as its exact bits (float.hex tells 0.1 from the next double, and -0.0 from 0.0)."""
    return [tuple(value.hex() if isinstance(value, float) else value for value in row) for row in rows]


@settings(max_examples=14, **SETTINGS)
@given(download=st.tuples(*(files() for files in FILES)))
def test_valid_files_are_staged_as_exactly_their_rows(download):
    """A day of aggTrades, of 1m klines and of metrics and a month of funding rates, each in any container,
    with or without a header, staged together: each file is loaded, with its header detected and nothing
    reported, and its Parquet holds Binance's columns and exactly its rows, bit for bit, in file order."""
    with tempfile.TemporaryDirectory() as tmp:
        records = stage_in(Path(tmp), [file.write(Path(tmp) / "data") for file in download])
        for file in download:
            staged = records[file.name]
            assert (staged.status, staged.problem, staged.quality) == ("loaded", None, []), file.name
            assert staged.has_header == file.header, file.name
            assert staged.rows_read == staged.rows_staged == len(file.rows), file.name
            columns, rows = staged_rows(staged)
            assert columns == list(COLUMNS[file.data_type]), file.name
            assert bits(rows) == bits(file.expected()), file.name


# ---------------------------------------------------------------- damaged zips


# The zip's structures and their fields (offset, size; APPNOTE.TXT 4.3.7, 4.3.12, 4.3.16): damage can aim at one.
LOCAL_HEADER = {"signature": (0, 4), "version needed": (4, 2), "flags": (6, 2), "method": (8, 2), "time": (10, 2),
                "date": (12, 2), "crc-32": (14, 4), "compressed size": (18, 4), "size": (22, 4),
                "name length": (26, 2), "extra length": (28, 2), "name": (30, None)}
CENTRAL_DIRECTORY = {"signature": (0, 4), "version made by": (4, 2), "version needed": (6, 2), "flags": (8, 2),
                     "method": (10, 2), "time": (12, 2), "date": (14, 2), "crc-32": (16, 4), "compressed size": (20, 4),
                     "size": (24, 4), "name length": (28, 2), "extra length": (30, 2), "comment length": (32, 2),
                     "disk": (34, 2), "internal attributes": (36, 2), "external attributes": (38, 4),
                     "local header offset": (42, 4), "name": (46, None)}
END_RECORD = {"signature": (0, 4), "disk": (4, 2), "directory disk": (6, 2), "entries on disk": (8, 2),
              "entries": (10, 2), "directory size": (12, 4), "directory offset": (16, 4), "comment length": (20, 2)}
ZIP_FIELDS = {f"{part}: {field}": (part, field) for part, fields in
              (("local header", LOCAL_HEADER), ("central directory", CENTRAL_DIRECTORY), ("end record", END_RECORD))
              for field in fields}


def field_span(data: bytes, where: str) -> tuple[int, int]:
    """Where a field of a one-member zip lies, or its member's data (the CSV, deflated or stored): (offset, size)."""
    if where == "member data":
        start = 30 + int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
        return start, int.from_bytes(data[18:22], "little")
    part, field = ZIP_FIELDS[where]
    end = data.rfind(b"PK\x05\x06")
    start = {"local header": 0, "central directory": int.from_bytes(data[end + 16:end + 20], "little"),
             "end record": end}[part]
    offset, size = {"local header": LOCAL_HEADER, "central directory": CENTRAL_DIRECTORY, "end record": END_RECORD}[
        part][field]
    if size is None:   # the member's name: its length is in the header before it
        size = int.from_bytes(data[start + offset - (4 if part == "local header" else 18):][:2], "little")
    return start + offset, size


@dataclass(frozen=True)
class Damage:
    """One byte flipped (xor `byte`), inserted or deleted, or the file cut, at a random offset or in a field."""
    kind: str       # flip, insert, delete, truncate
    where: str      # "anywhere", "member data" or a field of ZIP_FIELDS
    at: int         # the offset in the file, or in the field (modulo its size)
    byte: int = 1   # 1..255

    def apply(self, data: bytes) -> bytes:
        if self.where == "anywhere":
            offset = self.at % len(data)
        else:
            start, size = field_span(data, self.where)
            offset = start + self.at % size
        if self.kind == "flip":
            return data[:offset] + bytes([data[offset] ^ self.byte]) + data[offset + 1:]
        if self.kind == "insert":
            return data[:offset] + bytes([self.byte]) + data[offset:]
        return data[:offset] + data[offset + (1 if self.kind == "delete" else len(data)):]


damages = st.builds(Damage, kind=st.sampled_from(["flip", "insert", "delete", "truncate"]),
                    where=st.one_of(st.sampled_from(["anywhere", "member data"]), st.sampled_from(sorted(ZIP_FIELDS))),
                    at=st.integers(0, 10**6), byte=st.one_of(st.sampled_from([1 << bit for bit in range(8)]),
                                                             st.integers(1, 255)))   # (a bit flipped, or more)

def is_subsequence(rows: list, original: list) -> bool:
    """Whether rows are some of original's, in their order."""
    remaining = iter(original)
    return all(any(row == other for other in remaining) for row in rows)


TWO_TRADES = BinanceFile("aggTrades", "BTCUSDT", "2024-09-01", header=True, container="zip", rows=(
    ("2345678901", "58000.10", "0.005", "4567890123", "4567890125", "1725148800123", "true"),
    ("2345678902", "58000.20", "0.120", "4567890126", "4567890126", "1725148800456", "false")))


@settings(max_examples=40, **SETTINGS)
@given(original=any_file(containers=("zip", "zip+CHECKSUM")), damage=damages)
# Found by this property (each a crash with a traceback out of stage.stage_files): a zip whose central directory
# says its member is encrypted (flag bit 0: RuntimeError), patched (bit 5) or strongly encrypted (bit 6), is
# compressed by a method zipfile lacks, or needs a zip version above 6.3 (NotImplementedError).
@example(original=TWO_TRADES, damage=Damage("flip", "central directory: flags", 0, 0x01))
@example(original=TWO_TRADES, damage=Damage("flip", "central directory: flags", 0, 0x20))
@example(original=TWO_TRADES, damage=Damage("flip", "central directory: method", 0, 0x01))
@example(original=TWO_TRADES, damage=Damage("flip", "central directory: version needed", 0, 0x40))
def test_a_damaged_zip_is_quarantined_reported_or_staged_unchanged(original, damage):
    """Damage to a valid zip's bytes (with or without its .CHECKSUM) is never ingested as different numbers:
    staging quarantines the file, with a problem and a detail naming it, or stages only rows of the original, in
    their order: all of them, or fewer with what it left out reported. It never fails with an exception."""
    with tempfile.TemporaryDirectory() as tmp:
        path = original.write(Path(tmp) / "data")
        path.write_bytes(damage.apply(path.read_bytes()))
        staged = stage_in(Path(tmp), [path])[path.name]
        event(f"{staged.status} {staged.problem or ''}{' reported' if staged.quality else ''}")
        if staged.status == "quarantined":
            assert staged.problem and path.name in staged.detail, staged
        else:
            assert staged.status == "loaded", staged
            rows, expected = bits(staged_rows(staged)[1]), bits(original.expected())
            assert is_subsequence(rows, expected), "rows that the file does not hold were staged"
            assert rows == expected or staged.quality, "rows were left out, and nothing was reported"


# ---------------------------------------------------------------- damaged plain CSVs


LETTERS = "ghjkmpqruvwz"   # none can be part of a number's text (1e5, inf, nan, 0x1f, 0b1, 0o7)


@dataclass(frozen=True)
class LineDamage:
    """A data row cut short (its fields from one comma on lost, as at the end of a cut download), or one digit of
    one of its number fields replaced by a letter."""
    kind: str      # cut, letter
    row: int       # which row (modulo their count)
    field: int     # the field cut at, or the number field (modulo their count)
    at: int = 0    # which digit of that field
    letter: str = "g"

    def apply(self, file: BinanceFile) -> tuple[int, tuple[tuple[str, ...], ...]]:
        """(the damaged row's index, the file's rows with it damaged)."""
        index = self.row % len(file.rows)
        fields = list(file.rows[index])
        if self.kind == "cut":
            fields = fields[:1 + self.field % (len(fields) - 1)]
        else:
            numbers = [i for i in NUMBERS[file.data_type] if any(c.isdigit() for c in fields[i])]
            text = fields[numbers[self.field % len(numbers)]]
            digits = [i for i, c in enumerate(text) if c.isdigit()]
            at = digits[self.at % len(digits)]
            fields[numbers[self.field % len(numbers)]] = text[:at] + self.letter + text[at + 1:]
        return index, file.rows[:index] + (tuple(fields),) + file.rows[index + 1:]


line_damages = st.builds(LineDamage, kind=st.sampled_from(["cut", "letter"]), row=st.integers(0, MAX_ROWS),
                         field=st.integers(0, 20), at=st.integers(0, 30), letter=st.sampled_from(LETTERS))


@settings(max_examples=12, **SETTINGS)
@given(original=any_file(containers=("csv",)), damage=line_damages)
# Found by this property: the first row of a CSV without a header, its first character damaged, is taken for a
# header: the row is left out and nothing is reported.
@example(original=BinanceFile("aggTrades", "BTCUSDT", "2024-09-01", TWO_TRADES.rows, header=False, container="csv"),
         damage=LineDamage("letter", row=0, field=0, at=0))
def test_a_cut_line_or_a_letter_in_a_number_is_reported_with_its_line(original, damage):
    """A plain CSV has no checksum, so a changed digit cannot be told; but a row cut short, or with a letter in a
    number, is left out and reported as unparseable at its line (header counted), and every other row staged."""
    index, rows = damage.apply(original)
    with tempfile.TemporaryDirectory() as tmp:
        path = original.write(Path(tmp) / "data", rows)
        staged = stage_in(Path(tmp), [path])[path.name]
        assert staged.status == "loaded", staged
        unparseable = [row for row in staged.quality if row["problem"] == "unparseable_rows"]
        assert [(row["line"], row["rows_affected"]) for row in unparseable] == [(original.line(index), 1)], \
            staged.quality
        assert f"line {original.line(index)}" in unparseable[0]["detail"]
        assert bits(staged_rows(staged)[1]) == bits(original.expected(rows[:index] + rows[index + 1:]))
