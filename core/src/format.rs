//! Value formats a schema field may declare (JSON Schema's `format` keyword), which constrained
//! decoding enforces. `email`: in copy mode the value is one of the email addresses in the text,
//! each taken whole: the run of address characters around an `@` (what the copy constraint alone
//! allows includes any substring, such as a single letter of the address); elsewhere the value is
//! shaped as an address (`local@domain.tld`).

/// A field's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Email,
}

impl Format {
    pub const ALL: [Format; 1] = [Format::Email];

    /// A format by [`Format::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The names, for errors.
    pub fn names() -> String {
        Self::ALL.map(Format::name).join(", ")
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
        }
    }
}

fn local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// The longest address (RFC 5321's path limit less its brackets): also what bounds the work of
/// checking a value byte by byte.
pub const MAX_EMAIL: usize = 254;

/// Whether `v` is an address: a local part of address characters, not starting with a dot, an
/// `@`, and two or more dot-separated labels of letters, digits and hyphens; at most
/// [`MAX_EMAIL`] bytes.
pub fn is_email(v: &[u8]) -> bool {
    if v.len() > MAX_EMAIL {
        return false;
    }
    let Some(at) = v.iter().position(|&b| b == b'@') else { return false };
    let (local, domain) = (&v[..at], &v[at + 1..]);
    !local.is_empty()
        && local[0] != b'.'
        && local.iter().all(|&b| local_byte(b))
        && domain.split(|&b| b == b'.').count() >= 2
        && domain.split(|&b| b == b'.').all(|l| !l.is_empty() && l.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Whether some address of at most [`MAX_EMAIL`] bytes starts with `v` (so a value checked byte by
/// byte can always be finished).
pub fn is_email_prefix(v: &[u8]) -> bool {
    // The fewest bytes that complete `v`: `@a.b` after a local part, `a.b`, `b` or `.b` after the
    // `@`, a dot or a label.
    let needed = match v.iter().position(|&b| b == b'@') {
        None if v.first() == Some(&b'.') || !v.iter().all(|&b| local_byte(b)) => return false,
        None if v.is_empty() => 5,
        None => 4,
        Some(at) => {
            let domain = &v[at + 1..];
            if at == 0
                || v[0] == b'.'
                || !v[..at].iter().all(|&b| local_byte(b))
                || domain.first() == Some(&b'.')
                || domain.windows(2).any(|w| w == b"..")
                || !domain.iter().all(|&b| domain_byte(b))
            {
                return false;
            }
            match domain {
                [] => 3,
                [.., b'.'] => 1,
                _ if domain.contains(&b'.') => 0,
                _ => 2,
            }
        }
    };
    v.len() + needed <= MAX_EMAIL
}

/// The email addresses in `text`, each once, in order: around each `@`, the longest run of
/// address characters before it and of domain characters after it, without a leading dot or
/// trailing dots and hyphens (a full stop after an address is not part of it).
pub fn emails(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out: Vec<String> = Vec::new();
    for at in (0..b.len()).filter(|&i| b[i] == b'@') {
        let mut start = at;
        while start > 0 && local_byte(b[start - 1]) {
            start -= 1;
        }
        while start < at && b[start] == b'.' {
            start += 1;
        }
        let mut end = at + 1;
        while end < b.len() && domain_byte(b[end]) {
            end += 1;
        }
        while end > at + 1 && matches!(b[end - 1], b'.' | b'-') {
            end -= 1;
        }
        // ASCII bytes only: the span is on character boundaries.
        let span = &text[start..end];
        if is_email(span.as_bytes()) && !out.iter().any(|e| e == span) {
            out.push(span.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_found_whole_between_any_neighbours() {
        let text = "龙琳，邮箱 nafan@example.com。甘信喜｜linjun807@outlook.com｜(Mail)ling.kai@example.net\n\
                    [E-mail]: x_y+z@mail.co.uk. 又是nafan@example.com，a@b 不算，@c.com 也不算, .dot@q.cn-";
        assert_eq!(emails(text), ["nafan@example.com", "linjun807@outlook.com", "ling.kai@example.net", "x_y+z@mail.co.uk", "dot@q.cn"]);
        assert!(emails("没有邮箱").is_empty());
    }

    #[test]
    fn shapes_and_prefixes() {
        for good in ["a@b.cn", "ling.kai@example.net", "x_y+z@mail.co.uk", "1@2-3.com"] {
            assert!(is_email(good.as_bytes()), "{good}");
            for n in 0..=good.len() {
                assert!(is_email_prefix(&good.as_bytes()[..n]), "{good} up to {n}");
            }
        }
        for bad in ["a@b", "@b.cn", ".a@b.cn", "a@.cn", "a@b..cn", "a@b.cn.", "a b@c.cn", "邮箱a@b.cn", "a@b@c.cn"] {
            assert!(!is_email(bad.as_bytes()), "{bad}");
        }
        for dead in [".", "a b", "@", "a@.", "a@b..", "a@b@", "箱"] {
            assert!(!is_email_prefix(dead.as_bytes()), "{dead}");
        }
        // At the length limit a prefix is viable only if it can still be finished within it.
        let local = "a".repeat(MAX_EMAIL - 4);
        assert!(is_email_prefix(local.as_bytes()) && is_email(format!("{local}@b.c").as_bytes()));
        assert!(!is_email_prefix(format!("{local}a").as_bytes()));
        assert!(!is_email(format!("{local}@b.cd").as_bytes()));
    }
}
