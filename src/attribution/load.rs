//! CSV loaders: range tables (`start,end,value...`) and CIDR tables (`cidr,value...`).
//!
//! This file owns reading a file (plain, or gzip when the name ends in `.gz`), hashing its raw
//! bytes for the content id, parsing it with the `csv` crate (RFC 4180 quoting, no header row,
//! fields trimmed of surrounding whitespace) and turning every problem into an
//! [`AttributionError`] that names the file and the 1-based line where the record starts.
//!
//! Invariants:
//! * No row is ever skipped silently: a row either reaches the caller's callback or the load
//!   fails with [`AttributionError::Malformed`]. The only row that is skipped is the optional
//!   `cidr,...` header of a CIDR file (first record only).
//! * Every record must have exactly the declared columns (trailing optional columns of CIDR files
//!   may be absent). Missing columns, extra columns (typically an unquoted comma), bad addresses,
//!   family mismatches, `end < start`, and non-canonical CIDRs are all errors.
//! * [`LoadedFile::digest`] is xxh3-64 of the file's bytes as stored on disk (compressed bytes
//!   for `.gz`), computed while streaming, so it is stable for identical files. Files are never
//!   read into memory whole.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use csv::{ErrorKind, StringRecord};
use flate2::read::MultiGzDecoder;
use ipnet::IpNet;
use xxhash_rust::xxh3::Xxh3;

use super::prefix::Addr;
use crate::error::AttributionError;

/// What a loader read from one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedFile {
    /// The file.
    pub path: PathBuf,
    /// Data rows handed to the callback (header not counted).
    pub rows: u64,
    /// xxh3-64 of the raw file bytes.
    pub digest: u64,
}

/// One CSV record, as handed to loader callbacks.
#[derive(Debug, Clone, Copy)]
pub struct CsvRow<'a> {
    line: u64,
    record: &'a StringRecord,
}

impl<'a> CsvRow<'a> {
    /// 1-based line on which the record starts.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.record.len()
    }

    /// True if the record has no fields.
    pub fn is_empty(&self) -> bool {
        self.record.is_empty()
    }

    /// Field `i` (0-based), or `""` if the record is shorter.
    pub fn get(&self, i: usize) -> &'a str {
        self.record.get(i).unwrap_or("")
    }
}

/// True if `path` names a gzip file (by extension).
pub fn is_gzip(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// Stream `path` (hashing its raw bytes) and call `f` for every CSV record with its 1-based
/// line. An `Err(reason)` from `f` stops the load with [`AttributionError::Malformed`] at that
/// record's line.
pub fn for_each_record(
    path: &Path,
    mut f: impl FnMut(CsvRow<'_>) -> Result<(), String>,
) -> Result<LoadedFile, AttributionError> {
    let file = File::open(path).map_err(|source| AttributionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Xxh3::new();
    let raw = HashingReader {
        inner: BufReader::with_capacity(64 * 1024, file),
        hasher: &mut hasher,
    };
    let input: Box<dyn Read + '_> = if is_gzip(path) {
        Box::new(MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .buffer_capacity(64 * 1024)
        .from_reader(input);
    let mut record = StringRecord::new();
    let mut rows = 0u64;
    let mut last_line = 0u64;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(last_line + 1, |p| p.line());
                last_line = line;
                f(CsvRow {
                    line,
                    record: &record,
                })
                .map_err(|reason| AttributionError::Malformed {
                    path: path.to_path_buf(),
                    line,
                    reason,
                })?;
                rows += 1;
            }
            Err(e) => return Err(csv_error(path, e, last_line + 1)),
        }
    }
    // The CSV reader stopped at EOF of the (decoded) stream, so every byte of the file has gone
    // through the hasher (bytes after the last gzip member make the decoder fail instead).
    drop(reader);
    Ok(LoadedFile {
        path: path.to_path_buf(),
        rows,
        digest: hasher.digest(),
    })
}

/// Passes reads through while hashing the bytes, so the file is read once, streaming.
struct HashingReader<'h, R> {
    inner: R,
    hasher: &'h mut Xxh3,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn csv_error(path: &Path, e: csv::Error, fallback_line: u64) -> AttributionError {
    let line = e.position().map_or(fallback_line, |p| p.line());
    match e.into_kind() {
        ErrorKind::Io(source) => AttributionError::Io {
            path: path.to_path_buf(),
            source,
        },
        ErrorKind::Utf8 { err, .. } => AttributionError::Malformed {
            path: path.to_path_buf(),
            line,
            reason: format!("invalid UTF-8 in field {}: {err}", err.field() + 1),
        },
        other => AttributionError::Malformed {
            path: path.to_path_buf(),
            line,
            reason: format!("CSV error: {other:?}"),
        },
    }
}

/// Check that `row` has between `required` and `columns.len()` fields; the messages name the
/// missing column.
pub fn check_columns(row: &CsvRow<'_>, columns: &[&str], required: usize) -> Result<(), String> {
    let n = row.len();
    if n < required {
        return Err(format!(
            "missing column {} ({}): expected {} columns ({}), found {n}",
            n + 1,
            columns[n],
            if required == columns.len() {
                columns.len().to_string()
            } else {
                format!("{required} to {}", columns.len())
            },
            columns.join(","),
        ));
    }
    if n > columns.len() {
        return Err(format!(
            "too many columns: expected {} ({}), found {n} (unquoted comma?)",
            columns.len(),
            columns.join(","),
        ));
    }
    Ok(())
}

/// Load a range CSV: every record is `start,end,<columns[2..]>` with inclusive addresses of
/// family `A`. `columns` names all columns (at least `start,end`); each record must have exactly
/// that many. `f(start, end, row)` gets the parsed addresses and the record.
pub fn load_range_csv<A: Addr>(
    path: &Path,
    columns: &[&str],
    mut f: impl FnMut(A, A, CsvRow<'_>) -> Result<(), String>,
) -> Result<LoadedFile, AttributionError> {
    assert!(columns.len() >= 2, "a range CSV has at least start,end");
    for_each_record(path, |row| {
        check_columns(&row, columns, columns.len())?;
        let start = A::parse_addr(row.get(0)).map_err(|e| format!("start: {e}"))?;
        let end = A::parse_addr(row.get(1)).map_err(|e| format!("end: {e}"))?;
        if end < start {
            return Err(format!(
                "end address {} is before start address {}",
                end.display(),
                start.display()
            ));
        }
        f(start, end, row)
    })
}

/// Parse a CIDR strictly: `address/len`, host bits zero.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("bad CIDR {s:?} (expected address/prefix-length)"))?;
    if net.trunc() != net {
        return Err(format!(
            "bad CIDR {s:?}: host bits are set (network is {})",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Load a CIDR CSV: every record is `cidr,<columns[1..]>`, where the first `required` columns
/// must be present and the rest may be omitted. A first record whose first field is `cidr`
/// (any case) is a header and is skipped. Both families may be mixed; `f(net, row)` gets the
/// parsed network.
pub fn load_cidr_csv(
    path: &Path,
    columns: &[&str],
    required: usize,
    mut f: impl FnMut(IpNet, CsvRow<'_>) -> Result<(), String>,
) -> Result<LoadedFile, AttributionError> {
    assert!(
        (1..=columns.len()).contains(&required),
        "required must be 1..=columns"
    );
    let mut first = true;
    let mut header = false;
    let mut loaded = for_each_record(path, |row| {
        if std::mem::take(&mut first) && row.get(0).eq_ignore_ascii_case("cidr") {
            header = true;
            return Ok(());
        }
        check_columns(&row, columns, required)?;
        let net = parse_cidr(row.get(0))?;
        f(net, row)
    })?;
    if header {
        loaded.rows -= 1;
    }
    Ok(loaded)
}

/// Validate an ISO 3166-1 alpha-2 style code: exactly two ASCII letters `A`-`Z`.
pub fn parse_country(s: &str) -> Result<[u8; 2], String> {
    match s.as_bytes() {
        &[a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok([a, b]),
        _ => Err(format!(
            "bad country code {s:?} (expected two uppercase letters A-Z)"
        )),
    }
}

/// Parse an AS number: decimal digits only, fitting in 32 bits.
pub fn parse_asn(s: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad ASN {s:?} (expected a decimal number)"));
    }
    s.parse::<u32>()
        .map_err(|_| format!("bad ASN {s:?} (larger than 4294967295)"))
}
