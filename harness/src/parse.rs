//! Parsers for command-line values: hex byte strings, sizes, numbers, seconds.
//!
//! Each returns `Result<_, String>` so it can serve as a clap `value_parser`
//! and the message ends up in clap's usage error.

use std::time::Duration;

/// Bytes given in hex (an alias, so clap takes it as one value, not a list).
pub type HexBytes = Vec<u8>;

/// Hex bytes as `sg_raw` takes them: `"12 00 00 00 24 00"`, `"120000002400"`,
/// `"12:00:00"`, `"0x12,0x00"`. Separators are spaces, tabs, `:`, `,`, `-`
/// and `_`; a token of one or two digits is one byte (so `"12 0 0"` works),
/// a longer token must have an even number of digits.
pub fn hex_bytes(s: &str) -> Result<HexBytes, String> {
    let mut out = Vec::new();
    for token in s.split(|c: char| c.is_whitespace() || ",:-_".contains(c)) {
        if token.is_empty() {
            continue;
        }
        let digits = token
            .strip_prefix("0x")
            .or_else(|| token.strip_prefix("0X"))
            .unwrap_or(token);
        if let Some(bad) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(format!("'{bad}' in '{token}' is not a hex digit"));
        }
        match digits.len() {
            0 => return Err(format!("'{token}' has no hex digits")),
            1 | 2 => out.push(u8::from_str_radix(digits, 16).expect("checked hex digits")),
            n if n % 2 == 1 => {
                return Err(format!(
                    "'{token}' has an odd number of hex digits ({n}); write bytes as pairs, e.g. 12 00 or 1200"
                ))
            }
            _ => {
                for pair in digits.as_bytes().chunks(2) {
                    let pair = std::str::from_utf8(pair).expect("ASCII hex digits");
                    out.push(u8::from_str_radix(pair, 16).expect("checked hex digits"));
                }
            }
        }
    }
    if out.is_empty() {
        return Err("no hex bytes given".into());
    }
    Ok(out)
}

/// One byte in hex, with or without `0x`: `80`, `0x80`, `b0`.
pub fn hex_u8(s: &str) -> Result<u8, String> {
    let digits = s
        .trim()
        .strip_prefix("0x")
        .or_else(|| s.trim().strip_prefix("0X"))
        .unwrap_or(s.trim());
    u8::from_str_radix(digits, 16)
        .map_err(|_| format!("'{s}' is not a hex byte (00 to ff, e.g. 80 or 0x80)"))
}

/// An unsigned number in decimal or, with `0x`, hex.
pub fn number(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("'{s}' is not a number (decimal, or hex with 0x)"))
}

/// A byte count with an optional binary suffix: `512`, `4k`, `64M`, `1G`,
/// `2T`, also spelt `64MiB` or `64MB` (both mean 64 * 2^20). A number
/// in hex (`0x1000`) is taken as bytes.
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with("0x") || t.starts_with("0X") {
        return number(t);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("'{s}' is not a size (e.g. 512, 4k, 64M, 1G)"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is too large"))?;
    let suffix = suffix.trim();
    let lower = suffix.to_ascii_lowercase();
    let unit = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => {
            return Err(format!(
                "'{s}': unknown size suffix '{suffix}' (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Seconds, possibly fractional (`30`, `0.5`), as a [`Duration`].
pub fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v < 1e9) {
        return Err(format!(
            "'{s}': the timeout must be a positive number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A `--poll` mode name (`adaptive`, `off`).
pub fn poll_mode(s: &str) -> Result<vscsi_driver::PollMode, String> {
    s.parse()
        .map_err(|e: vscsi_driver::PollError| e.to_string())
}

/// `--queue-choice`: `sticky` or `round-robin`.
pub fn queue_choice(s: &str) -> Result<vscsi_driver::QueueChoice, String> {
    s.parse()
        .map_err(|e: vscsi_driver::QueueChoiceError| e.to_string())
}

/// A number of seconds that may be 0 (`--reconnect 0`: off).
pub fn seconds_or_zero(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v == 0.0 => Ok(Duration::ZERO),
        _ => seconds(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_with_and_without_spaces() {
        let want = vec![0x12, 0, 0, 0, 0x24, 0];
        assert_eq!(hex_bytes("12 00 00 00 24 00").unwrap(), want);
        assert_eq!(hex_bytes("120000002400").unwrap(), want);
        assert_eq!(hex_bytes("  12:00:00:00:24:00 ").unwrap(), want);
        assert_eq!(hex_bytes("0x12,0x00,0,0,0x24,0").unwrap(), want);
        assert_eq!(hex_bytes("12 0 0 0 24 0").unwrap(), want);
        assert_eq!(hex_bytes("1200 0000 2400").unwrap(), want);
        assert_eq!(hex_bytes("A0 ff").unwrap(), vec![0xA0, 0xFF]);
    }

    #[test]
    fn hex_rejects_junk() {
        assert!(hex_bytes("").is_err());
        assert!(hex_bytes("   ").is_err());
        assert!(hex_bytes("12 0g").is_err());
        assert!(hex_bytes("12000").unwrap_err().contains("odd"));
        assert!(hex_bytes("0x").is_err());
    }

    #[test]
    fn hex_byte_for_vpd_pages() {
        assert_eq!(hex_u8("80").unwrap(), 0x80);
        assert_eq!(hex_u8("0xb0").unwrap(), 0xB0);
        assert_eq!(hex_u8("0").unwrap(), 0);
        assert!(hex_u8("100").is_err());
        assert!(hex_u8("zz").is_err());
    }

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(size("512").unwrap(), 512);
        assert_eq!(size("4k").unwrap(), 4096);
        assert_eq!(size("4K").unwrap(), 4096);
        assert_eq!(size("64M").unwrap(), 64 << 20);
        assert_eq!(size("64MiB").unwrap(), 64 << 20);
        assert_eq!(size("64MB").unwrap(), 64 << 20);
        assert_eq!(size("1G").unwrap(), 1 << 30);
        assert_eq!(size("2t").unwrap(), 2 << 40);
        assert_eq!(size("0x1000").unwrap(), 4096);
        assert!(size("").is_err());
        assert!(size("M").is_err());
        assert!(size("1.5G").is_err());
        assert!(size("12Q").is_err());
        assert!(size("99999999999T").is_err());
    }

    #[test]
    fn numbers_decimal_or_hex() {
        assert_eq!(number("42").unwrap(), 42);
        assert_eq!(number("0x2a").unwrap(), 42);
        assert_eq!(number("1_000").unwrap(), 1000);
        assert!(number("-1").is_err());
        assert!(number("ten").is_err());
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(seconds("30").unwrap(), Duration::from_secs(30));
        assert_eq!(seconds("0.5").unwrap(), Duration::from_millis(500));
        assert!(seconds("0").is_err());
        assert!(seconds("-3").is_err());
        assert!(seconds("soon").is_err());
    }
}
