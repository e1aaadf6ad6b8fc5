//! `Ttl`: a certificate or token lifetime written the way operators write it (`90s`, `15m`,
//! `1h`, `1h30m`). Range checks belong to whoever consumes the value (the CA knows its bounds).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A lifetime of whole seconds, at least one second.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("{0:?} is not a duration; write it like 90s, 15m, 1h or 1h30m")]
    Syntax(String),
    #[error("{0:?} is shorter than one second")]
    TooShort(String),
}

impl Ttl {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl FromStr for Ttl {
    type Err = TtlError;

    fn from_str(s: &str) -> Result<Self, TtlError> {
        let d = humantime::parse_duration(s.trim()).map_err(|_| TtlError::Syntax(s.to_owned()))?;
        if d.as_secs() == 0 {
            return Err(TtlError::TooShort(s.to_owned()));
        }
        // Sub-second precision has no meaning for certificate validity (X.509 time is seconds).
        Ok(Self(Duration::from_secs(d.as_secs())))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0.as_secs();
        let (h, m);
        (h, s) = (s / 3600, s % 3600);
        (m, s) = (s / 60, s % 60);
        let mut out = String::new();
        if h > 0 {
            out += &format!("{h}h");
        }
        if m > 0 {
            out += &format!("{m}m");
        }
        if s > 0 || out.is_empty() {
            out += &format!("{s}s");
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ttl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        for (input, secs, shown) in
            [("1h", 3600, "1h"), ("15m", 900, "15m"), ("90s", 90, "1m30s"), ("1h30m", 5400, "1h30m")]
        {
            let t: Ttl = input.parse().expect("valid");
            assert_eq!(t.as_secs(), secs);
            assert_eq!(t.to_string(), shown);
            assert_eq!(t.to_string().parse::<Ttl>().expect("round trip"), t);
        }
    }

    #[test]
    fn refuses_garbage_and_zero() {
        assert!(matches!("abc".parse::<Ttl>(), Err(TtlError::Syntax(_))));
        assert!(matches!("-1h".parse::<Ttl>(), Err(TtlError::Syntax(_))));
        assert!(matches!("0s".parse::<Ttl>(), Err(TtlError::TooShort(_))));
        assert!(matches!("500ms".parse::<Ttl>(), Err(TtlError::TooShort(_))));
    }
}
