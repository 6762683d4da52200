//! Readers that turn observation files into [`Observation`]s.
//!
//! Three formats, all streamed (nothing is loaded whole, so standard input
//! and endless producers work):
//!
//! * **CSV** with a header naming `time` and `ip`, and optionally `org` and
//!   `country` (any order, case-insensitive).
//! * **NDJSON**: one object per line, `{"ip": "…", "time": …, "org": …,
//!   "country": …}`; `org` and `country` may be absent or `null`, `org` may
//!   be a string or an integer, other keys are ignored; blank lines are
//!   skipped.
//! * **PEEROBS1**, the observation files of `../shared/peers`: a 32-byte
//!   little-endian header (`PEEROBS1`, version u32 = 1, record size u32 =
//!   14, record count u64, unix time of day 0 u32, day count u32) and then
//!   packed 14-byte records `ts u32 | ip u32 (1.2.3.4 = 0x01020304) | org
//!   u32 | cc [u8; 2]`. There is no dictionary: org ids are sent as their
//!   decimal text (`"1234"`, as `sketchd loadgen` does), org 0 means "not
//!   given", and a country of two NUL bytes means "not given".
//!
//! In CSV and NDJSON, `time` is unix seconds or RFC 3339. Countries must be
//! two ASCII letters and are sent upper case; empty org or country values
//! mean "not given" (the server attributes them).
//!
//! Every error is a [`FormatError`] naming the input, the line (or, for
//! PEEROBS1, the 1-based record number) and the field.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::str::FromStr;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Observation;

/// The magic bytes that open a PEEROBS1 file.
pub const PEEROBS_MAGIC: &[u8; 8] = b"PEEROBS1";
const PEEROBS_HEADER_LEN: usize = 32;
const PEEROBS_RECORD_LEN: usize = 14;

/// An input format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
    Peerobs,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            "peerobs" | "peerobs1" => Ok(Format::Peerobs),
            other => Err(format!("{other:?} is not csv, ndjson or peerobs")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
            Format::Peerobs => "peerobs",
        })
    }
}

impl Format {
    /// The format a file name implies: `.csv`, `.ndjson`/`.jsonl`/`.json`,
    /// `.bin`/`.peerobs`/`.obs`.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            "bin" | "peerobs" | "obs" => Some(Format::Peerobs),
            _ => None,
        }
    }

    /// The format the first bytes of an input imply: the PEEROBS1 magic,
    /// else `{` as the first non-blank byte for NDJSON, else CSV.
    pub fn sniff(head: &[u8]) -> Format {
        if head.starts_with(PEEROBS_MAGIC) {
            return Format::Peerobs;
        }
        match head.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Format::Ndjson,
            _ => Format::Csv,
        }
    }
}

/// Where in an input something went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Opening or the header.
    Start,
    /// A 1-based line of a text format.
    Line(u64),
    /// A 1-based record of a PEEROBS1 file.
    Record(u64),
}

/// A bad input: which input, where, which field, what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FormatError {
    pub input: String,
    pub location: Location,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.input)?;
        match self.location {
            Location::Start => {}
            Location::Line(n) => write!(f, ":{n}")?,
            Location::Record(n) => write!(f, ": record {n}")?,
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl FormatError {
    fn new(input: &str, location: Location, field: Option<&str>, message: String) -> Self {
        FormatError {
            input: input.to_owned(),
            location,
            field: field.map(str::to_owned),
            message,
        }
    }
}

/// A stream of observations from one input.
pub type ObservationReader = Box<dyn Iterator<Item = Result<Observation, FormatError>> + Send>;

/// An opened input: its display name, format and observations.
pub struct Input {
    pub name: String,
    pub format: Format,
    pub observations: ObservationReader,
}

/// Opens `path` (`-` for standard input) in `format`, or the format its
/// extension or, failing that, its first bytes imply when `format` is `None`.
pub fn open(path: &Path, format: Option<Format>) -> Result<Input, FormatError> {
    let stdin = path == Path::new("-");
    let name = if stdin {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    };
    let raw: Box<dyn Read + Send> = if stdin {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(path).map_err(|e| {
            FormatError::new(&name, Location::Start, None, format!("cannot open: {e}"))
        })?)
    };
    let format = format.or_else(|| (!stdin).then(|| Format::from_extension(path)).flatten());
    from_reader(name, raw, format)
}

/// Reads observations from any byte stream named `name`; `None` sniffs the
/// format from the first bytes.
pub fn from_reader(
    name: String,
    raw: Box<dyn Read + Send>,
    format: Option<Format>,
) -> Result<Input, FormatError> {
    let (format, reader) = buffered(&name, raw, format)?;
    let observations: ObservationReader = match format {
        Format::Csv => Box::new(CsvReader::new(name.clone(), reader)?),
        Format::Ndjson => Box::new(NdjsonReader::new(name.clone(), reader)),
        Format::Peerobs => Box::new(PeerobsReader::new(name.clone(), reader)?),
    };
    Ok(Input {
        name,
        format,
        observations,
    })
}

/// A byte stream read through.
type Buffered = BufReader<io::Chain<io::Cursor<Vec<u8>>, Box<dyn Read + Send>>>;

/// `raw` buffered, and its format: `format`, or the one its first bytes
/// imply.
fn buffered(
    name: &str,
    mut raw: Box<dyn Read + Send>,
    format: Option<Format>,
) -> Result<(Format, Buffered), FormatError> {
    // The first bytes, read fully (a pipe may deliver fewer per read) and
    // put back in front of the rest.
    let mut head = vec![0; PEEROBS_MAGIC.len()];
    let got = read_full(&mut raw, &mut head)
        .map_err(|e| FormatError::new(name, Location::Start, None, format!("cannot read: {e}")))?;
    head.truncate(got);
    let format = format.unwrap_or_else(|| Format::sniff(&head));
    let reader = BufReader::with_capacity(1 << 16, io::Cursor::new(head).chain(raw));
    Ok((format, reader))
}

/// Where observation `index` (0-based) of the file `path` is, read as
/// `format` (`None`: as [`open`] decides): its line, or its record for
/// PEEROBS1. For messages about a row the server refused; `None` when the
/// file cannot be read again that far.
pub fn locate(path: &Path, format: Option<Format>, index: u64) -> Option<Location> {
    let file = File::open(path).ok()?;
    let format = format.or_else(|| Format::from_extension(path));
    let name = path.display().to_string();
    let (format, reader) = buffered(&name, Box::new(file), format).ok()?;
    let nth = usize::try_from(index).ok()?;
    match format {
        Format::Csv => {
            let mut csv = CsvReader::new(name, reader).ok()?;
            csv.nth(nth)?.ok()?;
            // The csv crate does not count the blank lines it skips (its
            // record position is where it began to look): count the line
            // ends before the record's first byte instead.
            let byte = csv.record.position()?.byte();
            let mut file = BufReader::new(File::open(path).ok()?);
            let mut ends = 0u64;
            let mut at = 0u64;
            let mut b = [0u8; 1];
            while file.read(&mut b).ok()? == 1 {
                if at >= byte && !matches!(b[0], b'\n' | b'\r') {
                    break;
                }
                ends += u64::from(b[0] == b'\n');
                at += 1;
            }
            Some(Location::Line(ends + 1))
        }
        Format::Ndjson => {
            let mut nd = NdjsonReader::new(name, reader);
            nd.nth(nth)?.ok()?;
            Some(Location::Line(nd.line))
        }
        Format::Peerobs => Some(Location::Record(index + 1)),
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------- fields

/// An IP address in text.
fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|e| format!("{text:?} is not an IP address ({e})"))
}

/// Unix seconds, or an RFC 3339 timestamp.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("{text:?} is neither unix seconds nor RFC 3339 ({e})"))
}

/// Two ASCII letters, upper-cased; empty is "not given".
fn parse_country(text: &str) -> Result<Option<String>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() == 2 && text.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Ok(Some(text.to_ascii_uppercase()));
    }
    Err(format!(
        "{text:?} is not a two-letter country code (ISO 3166-1 alpha-2)"
    ))
}

fn optional(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

// ---------------------------------------------------------------- CSV

/// CSV with a header naming `time`, `ip` and optionally `org`, `country`.
pub struct CsvReader<R: Read> {
    name: String,
    csv: csv::Reader<R>,
    record: csv::StringRecord,
    time: usize,
    ip: usize,
    org: Option<usize>,
    country: Option<usize>,
    done: bool,
}

impl<R: Read> CsvReader<R> {
    /// Reads the header.
    pub fn new(name: String, reader: R) -> Result<Self, FormatError> {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_reader(reader);
        let start = |message: String| FormatError::new(&name, Location::Start, None, message);
        let headers = csv
            .headers()
            .map_err(|e| start(format!("cannot read the CSV header: {e}")))?
            .clone();
        let find = |col: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(col));
        let missing = |col: &str| {
            let found: Vec<String> = headers.iter().map(|h| format!("{h:?}")).collect();
            FormatError::new(
                &name,
                Location::Line(1),
                Some(col),
                format!(
                    "the header has no such column (its columns: {}); the first line must name \
                     the columns time and ip, and optionally org and country, in any order",
                    found.join(", ")
                ),
            )
        };
        let time = find("time").ok_or_else(|| missing("time"))?;
        let ip = find("ip").ok_or_else(|| missing("ip"))?;
        let (org, country) = (find("org"), find("country"));
        Ok(CsvReader {
            name,
            csv,
            record: csv::StringRecord::new(),
            time,
            ip,
            org,
            country,
            done: false,
        })
    }

    fn row(&self) -> Result<Observation, FormatError> {
        let line = self.record.position().map_or(0, |p| p.line());
        let err = |field: &str, message: String| {
            FormatError::new(&self.name, Location::Line(line), Some(field), message)
        };
        let field = |i: usize| self.record.get(i).unwrap_or("");
        let ip = parse_ip(field(self.ip)).map_err(|m| err("ip", m))?;
        let unix_seconds = parse_time(field(self.time)).map_err(|m| err("time", m))?;
        let org = self.org.map(field).and_then(optional);
        let country = match self.country {
            Some(i) => parse_country(field(i)).map_err(|m| err("country", m))?,
            None => None,
        };
        Ok(Observation {
            ip,
            unix_seconds,
            org,
            country,
        })
    }
}

impl<R: Read> Iterator for CsvReader<R> {
    type Item = Result<Observation, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.csv.read_record(&mut self.record) {
            Ok(true) => Some(self.row()),
            Ok(false) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                let line = e.position().map_or(0, |p| p.line());
                Some(Err(FormatError::new(
                    &self.name,
                    Location::Line(line),
                    None,
                    format!("bad CSV: {e}"),
                )))
            }
        }
    }
}

// ---------------------------------------------------------------- NDJSON

/// One JSON object per line.
pub struct NdjsonReader<R: BufRead> {
    name: String,
    reader: R,
    line: u64,
    text: String,
    done: bool,
}

#[derive(serde::Deserialize)]
struct NdjsonRow {
    #[serde(default)]
    ip: Option<serde_json::Value>,
    #[serde(default)]
    time: Option<serde_json::Value>,
    #[serde(default)]
    org: Option<serde_json::Value>,
    #[serde(default)]
    country: Option<serde_json::Value>,
}

impl<R: BufRead> NdjsonReader<R> {
    pub fn new(name: String, reader: R) -> Self {
        NdjsonReader {
            name,
            reader,
            line: 0,
            text: String::new(),
            done: false,
        }
    }

    fn row(&self) -> Result<Observation, FormatError> {
        use serde_json::Value;
        let err = |field: Option<&str>, message: String| {
            FormatError::new(&self.name, Location::Line(self.line), field, message)
        };
        let row: NdjsonRow = serde_json::from_str(self.text.trim())
            .map_err(|e| err(None, format!("not a JSON object: {e}")))?;
        let ip = match row.ip {
            Some(Value::String(s)) => parse_ip(&s).map_err(|m| err(Some("ip"), m))?,
            None | Some(Value::Null) => return Err(err(Some("ip"), "missing".into())),
            Some(other) => {
                return Err(err(Some("ip"), format!("{other} is not a string")));
            }
        };
        let unix_seconds = match row.time {
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite())
                        .map(|f| f.floor() as i64)
                })
                .ok_or_else(|| err(Some("time"), format!("{n} is not unix seconds")))?,
            Some(Value::String(s)) => parse_time(&s).map_err(|m| err(Some("time"), m))?,
            None | Some(Value::Null) => return Err(err(Some("time"), "missing".into())),
            Some(other) => {
                return Err(err(
                    Some("time"),
                    format!("{other} is neither unix seconds nor an RFC 3339 string"),
                ));
            }
        };
        let org = match row.org {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => optional(&s),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
            Some(other) => {
                return Err(err(
                    Some("org"),
                    format!("{other} is neither a string nor an integer"),
                ));
            }
        };
        let country = match row.country {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => parse_country(&s).map_err(|m| err(Some("country"), m))?,
            Some(other) => {
                return Err(err(Some("country"), format!("{other} is not a string")));
            }
        };
        Ok(Observation {
            ip,
            unix_seconds,
            org,
            country,
        })
    }
}

impl<R: BufRead> Iterator for NdjsonReader<R> {
    type Item = Result<Observation, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.text.clear();
            self.line += 1;
            match self.reader.read_line(&mut self.text) {
                Ok(0) => self.done = true,
                Ok(_) if self.text.trim().is_empty() => {}
                Ok(_) => return Some(self.row()),
                Err(e) => {
                    self.done = true;
                    return Some(Err(FormatError::new(
                        &self.name,
                        Location::Line(self.line),
                        None,
                        format!("cannot read: {e}"),
                    )));
                }
            }
        }
        None
    }
}

// ---------------------------------------------------------------- PEEROBS1

/// The header of a PEEROBS1 file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerobsHeader {
    pub records: u64,
    pub t0: u32,
    pub days: u32,
}

impl PeerobsHeader {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; PEEROBS_HEADER_LEN] {
        let mut h = [0u8; PEEROBS_HEADER_LEN];
        h[..8].copy_from_slice(PEEROBS_MAGIC);
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[12..16].copy_from_slice(&(PEEROBS_RECORD_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.records.to_le_bytes());
        h[24..28].copy_from_slice(&self.t0.to_le_bytes());
        h[28..32].copy_from_slice(&self.days.to_le_bytes());
        h
    }
}

/// Encodes one PEEROBS1 record (for writers and tests).
pub fn peerobs_record(ts: u32, ip: Ipv4Addr, org: u32, cc: [u8; 2]) -> [u8; PEEROBS_RECORD_LEN] {
    let mut r = [0u8; PEEROBS_RECORD_LEN];
    r[..4].copy_from_slice(&ts.to_le_bytes());
    r[4..8].copy_from_slice(&u32::from(ip).to_le_bytes());
    r[8..12].copy_from_slice(&org.to_le_bytes());
    r[12..].copy_from_slice(&cc);
    r
}

/// Packed 14-byte records after a 32-byte header.
pub struct PeerobsReader<R: Read> {
    name: String,
    reader: R,
    header: PeerobsHeader,
    next: u64,
    done: bool,
}

impl<R: Read> PeerobsReader<R> {
    /// Reads and checks the header.
    pub fn new(name: String, mut reader: R) -> Result<Self, FormatError> {
        let start = |message: String| FormatError::new(&name, Location::Start, None, message);
        let mut h = [0u8; PEEROBS_HEADER_LEN];
        let got = read_full(&mut reader, &mut h).map_err(|e| start(format!("cannot read: {e}")))?;
        if got < PEEROBS_HEADER_LEN {
            return Err(start(format!(
                "{got} bytes, shorter than the 32-byte PEEROBS1 header"
            )));
        }
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        if &h[..8] != PEEROBS_MAGIC {
            return Err(start("does not start with PEEROBS1".into()));
        }
        if u32_at(8) != 1 || u32_at(12) as usize != PEEROBS_RECORD_LEN {
            return Err(start(format!(
                "PEEROBS1 version {} with {}-byte records; only version 1 with 14-byte records is known",
                u32_at(8),
                u32_at(12)
            )));
        }
        let header = PeerobsHeader {
            records: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
            t0: u32_at(24),
            days: u32_at(28),
        };
        Ok(PeerobsReader {
            name,
            reader,
            header,
            next: 0,
            done: false,
        })
    }

    pub fn header(&self) -> PeerobsHeader {
        self.header
    }

    fn record(&mut self) -> Result<Observation, FormatError> {
        let number = self.next + 1;
        let err = |field: Option<&str>, message: String| {
            FormatError::new(&self.name, Location::Record(number), field, message)
        };
        let mut r = [0u8; PEEROBS_RECORD_LEN];
        let got = read_full(&mut self.reader, &mut r)
            .map_err(|e| err(None, format!("cannot read: {e}")))?;
        if got < PEEROBS_RECORD_LEN {
            return Err(err(
                None,
                format!(
                    "truncated: the header promises {} records",
                    self.header.records
                ),
            ));
        }
        let word = |at: usize| u32::from_le_bytes(r[at..at + 4].try_into().expect("4 bytes"));
        let org = word(8);
        let country = match [r[12], r[13]] {
            [0, 0] => None,
            cc if cc.iter().all(u8::is_ascii_alphabetic) => {
                Some(String::from_utf8_lossy(&cc).to_ascii_uppercase())
            }
            cc => {
                return Err(err(
                    Some("cc"),
                    format!("bytes {cc:02x?} are not a two-letter country code"),
                ));
            }
        };
        Ok(Observation {
            ip: IpAddr::V4(Ipv4Addr::from(word(4))),
            unix_seconds: i64::from(word(0)),
            org: (org != 0).then(|| org.to_string()),
            country,
        })
    }
}

impl<R: Read> Iterator for PeerobsReader<R> {
    type Item = Result<Observation, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.header.records {
            return None;
        }
        let item = self.record();
        self.next += 1;
        self.done = item.is_err();
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.header.records - self.next) as usize;
        (0, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(format: Option<Format>, bytes: Vec<u8>) -> Result<Vec<Observation>, FormatError> {
        let input = from_reader("t".into(), Box::new(io::Cursor::new(bytes)), format)?;
        input.observations.collect()
    }

    fn obs(ip: &str, t: i64, org: Option<&str>, cc: Option<&str>) -> Observation {
        Observation {
            ip: ip.parse().unwrap(),
            unix_seconds: t,
            org: org.map(str::to_owned),
            country: cc.map(str::to_owned),
        }
    }

    const T: i64 = 1_775_001_600; // 2026-04-01T00:00:00Z

    #[test]
    fn observations_are_located_by_line_or_record() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("o.csv");
        std::fs::write(&csv, "time,ip\n1,1.2.3.4\n\n2,1.2.3.5\n").unwrap();
        assert_eq!(locate(&csv, None, 0), Some(Location::Line(2)));
        assert_eq!(locate(&csv, None, 1), Some(Location::Line(4)));
        assert_eq!(locate(&csv, None, 2), None);
        let nd = dir.path().join("o.ndjson");
        std::fs::write(
            &nd,
            "{\"ip\":\"1.2.3.4\",\"time\":1}\n\n{\"ip\":\"::1\",\"time\":2}\n",
        )
        .unwrap();
        assert_eq!(locate(&nd, None, 1), Some(Location::Line(3)));
        assert_eq!(
            locate(&nd, Some(Format::Peerobs), 4),
            Some(Location::Record(5))
        );
    }

    #[test]
    fn a_header_without_the_time_column_lists_its_columns() {
        let err = read(Some(Format::Csv), b"when,addr\n1,1.2.3.4\n".to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t:1: field time: the header has no such column (its columns: \"when\", \"addr\"); \
             the first line must name the columns time and ip, and optionally org and country, \
             in any order"
        );
    }

    fn expected() -> Vec<Observation> {
        vec![
            obs("1.2.3.4", T, Some("7"), Some("DE")),
            obs("10.0.0.1", T + 60, None, None),
            obs("2001:db8::1", T + 120, Some("AS1"), Some("US")),
        ]
    }

    #[test]
    fn csv_and_ndjson_give_the_same_observations() {
        let csv = "Country,IP,time,org\nde,1.2.3.4,1775001600,7\n,10.0.0.1,2026-04-01T00:01:00Z,\nUS,2001:db8::1,2026-04-01T02:02:00+02:00,AS1\n";
        let ndjson = r#"{"ip":"1.2.3.4","time":1775001600,"org":7,"country":"de"}

{"ip":"10.0.0.1","time":"2026-04-01T00:01:00Z","org":null,"extra":[1]}
{"ip":"2001:db8::1","time":"1775001720","org":"AS1","country":"US"}
"#;
        assert_eq!(read(None, csv.into()).unwrap(), expected());
        assert_eq!(read(None, ndjson.into()).unwrap(), expected());
        assert_eq!(read(Some(Format::Csv), csv.into()).unwrap(), expected());
    }

    #[test]
    fn peerobs_records_decode() {
        let mut bytes = PeerobsHeader {
            records: 2,
            t0: T as u32,
            days: 1,
        }
        .encode()
        .to_vec();
        bytes.extend(peerobs_record(
            T as u32,
            Ipv4Addr::new(1, 2, 3, 4),
            7,
            *b"DE",
        ));
        bytes.extend(peerobs_record(
            T as u32 + 60,
            Ipv4Addr::new(10, 0, 0, 1),
            0,
            [0, 0],
        ));
        let want = &expected()[..2];
        assert_eq!(read(None, bytes.clone()).unwrap(), want);
        // Truncated: the header promises a third record.
        bytes[16] = 3;
        let err = read(None, bytes).unwrap_err();
        assert_eq!(err.location, Location::Record(3));
        assert!(
            err.to_string().starts_with("t: record 3: truncated"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let csv = "time,ip\n1775001600,1.2.3.4\n1775001600,1.2.3.999\n";
        let err = read(None, csv.into()).unwrap_err();
        assert_eq!(err.location, Location::Line(3));
        assert_eq!(err.field.as_deref(), Some("ip"));
        assert!(err.to_string().starts_with("t:3: field ip: "), "{err}");

        let err = read(None, "time,ip,country\nyesterday,1.2.3.4,DE\n".into()).unwrap_err();
        assert_eq!(
            (err.location, err.field.as_deref()),
            (Location::Line(2), Some("time"))
        );
        let err = read(None, "time,ip,country\n1,1.2.3.4,DEU\n".into()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("country"));
        let err = read(None, "ip,when\n1.2.3.4,1\n".into()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("time"));

        let nd = "{\"ip\":\"1.2.3.4\",\"time\":1}\n\n{\"ip\":\"1.2.3.4\"}\n";
        let err = read(None, nd.into()).unwrap_err();
        assert_eq!(
            (err.location, err.field.as_deref()),
            (Location::Line(3), Some("time"))
        );
        let err = read(Some(Format::Ndjson), "{\"ip\":4,\"time\":1}\n".into()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("ip"));
        let err = read(Some(Format::Ndjson), "{\"ip\":\n".into()).unwrap_err();
        assert_eq!(
            (err.location, err.field.as_deref()),
            (Location::Line(1), None)
        );

        let err = read(Some(Format::Peerobs), b"PEEROBS2".to_vec()).unwrap_err();
        assert_eq!(err.location, Location::Start);
    }

    #[test]
    fn detects_formats() {
        assert_eq!(
            Format::from_extension(Path::new("a.CSV")),
            Some(Format::Csv)
        );
        assert_eq!(
            Format::from_extension(Path::new("a.jsonl")),
            Some(Format::Ndjson)
        );
        assert_eq!(
            Format::from_extension(Path::new("observations.bin")),
            Some(Format::Peerobs)
        );
        assert_eq!(Format::from_extension(Path::new("a.txt")), None);
        assert_eq!(Format::sniff(b"PEEROBS1"), Format::Peerobs);
        assert_eq!(Format::sniff(b"  {\"ip"), Format::Ndjson);
        assert_eq!(Format::sniff(b"time,ip"), Format::Csv);
        assert_eq!(Format::sniff(b""), Format::Csv);
        assert_eq!("PeerObs".parse::<Format>(), Ok(Format::Peerobs));
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn parses_times() {
        assert_eq!(parse_time("1775001600").unwrap(), 1_775_001_600);
        assert_eq!(parse_time("2026-04-01T00:00:00Z").unwrap(), 1_775_001_600);
        assert_eq!(
            parse_time("2026-04-01T02:00:00+02:00").unwrap(),
            1_775_001_600
        );
        assert!(parse_time("yesterday").is_err());
    }
}
