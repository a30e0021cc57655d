//! Keeping credentials out of what a plugin prints.
//!
//! A device-config `manager` URL may carry `user:password@`. Error messages
//! quote URLs (the one that failed, the list that was tried) and xapi shows
//! them to the admin and writes them to its logs, so every error object
//! the runner prints goes through [`credentials`] first: one place, so a
//! new message cannot forget it.

/// `text` with the user information of every `scheme://user[:password]@host`
/// URL in it replaced by `***`.
pub fn credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        out.push_str(&rest[..authority_start]);
        let after = &rest[authority_start..];
        // The authority ends where the path, query or fragment starts, or
        // where the URL itself ends in running text.
        let end = after
            .find(|c: char| {
                matches!(
                    c,
                    '/' | '?' | '#' | '\'' | '"' | '<' | '>' | '`' | ',' | ';'
                ) || c.is_whitespace()
            })
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***");
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_is_replaced() {
        assert_eq!(
            credentials("cannot reach https://admin:s3cret@m1:8080/api/v1/x: refused"),
            "cannot reach https://***@m1:8080/api/v1/x: refused"
        );
        assert_eq!(
            credentials("tried http://u@a:1, http://v:p%40ss@b:2 and 'http://w:x@c'"),
            "tried http://***@a:1, http://***@b:2 and 'http://***@c'"
        );
    }

    #[test]
    fn only_user_information_changes() {
        for (text, want) in [
            ("", ""),
            ("no url here", "no url here"),
            ("http://127.0.0.1:1/api", "http://127.0.0.1:1/api"),
            (
                "mail me at someone@example.org",
                "mail me at someone@example.org",
            ),
            ("://", "://"),
            ("a://@", "a://***@"),
            ("trailing http://", "trailing http://"),
            ("é://ü@ï", "é://***@ï"),
        ] {
            assert_eq!(credentials(text), want, "{text:?}");
        }
    }

    #[test]
    fn arbitrary_text_never_panics_and_never_keeps_a_password() {
        // A small deterministic sweep over awkward inputs: multi-byte
        // characters around every delimiter.
        let parts = ["://", "@", ":", "/", "é", "pw", " ", "'", "h"];
        for a in parts {
            for b in parts {
                for c in parts {
                    for d in parts {
                        let t = format!("x{a}{b}{c}{d}");
                        let _ = credentials(&t);
                    }
                }
            }
        }
        let leaked = credentials("https://user:hunter2hunter2@host/");
        assert!(!leaked.contains("hunter2"), "{leaked}");
    }
}
