//! Turns the global options into a [`ClientConfig`]: where the manager is,
//! which token to present, which CA to trust.
//!
//! The token deserves care. It is an admin credential, so it never comes
//! from a flag value (visible to every local user in `ps` and in shell
//! history); it comes from a file (`--token-file` / `VSKY_TOKEN_FILE`) or
//! from the `VSKY_TOKEN` environment variable. A file wins over the
//! variable because naming a file is the more deliberate act. Token files
//! follow the usual secrets-file convention: blank lines and `#` comments
//! are skipped and the first remaining line, trimmed, is the token.

use std::io::Read as _;
use std::path::Path;

use vsky_api::ClientConfig;

use crate::args::GlobalArgs;
use crate::error::CliError;

/// Environment variable that may hold the token itself.
pub const TOKEN_ENV: &str = "VSKY_TOKEN";

/// A token file larger than this is surely the wrong file (say,
/// `--token-file /dev/zero`); refuse it instead of reading it whole.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Builds the client configuration from the parsed options and the token
/// found in the environment (`env_token` is `VSKY_TOKEN`, passed in so that
/// tests do not have to mutate the process environment).
pub fn client_config(
    global: &GlobalArgs,
    env_token: Option<String>,
) -> Result<ClientConfig, CliError> {
    let token = match &global.token_file {
        Some(path) => Some(read_token_file(path)?),
        None => match env_token.filter(|t| !t.trim().is_empty()) {
            Some(t) => Some(check_token(t.trim(), TOKEN_ENV)?),
            None => None,
        },
    };
    Ok(ClientConfig {
        manager_url: global.manager.clone(),
        token,
        ca_file: global.ca_file.clone(),
        timeout: Some(global.timeout),
    })
}

/// Reads the token from `path`: its first line that is neither blank nor a
/// comment, trimmed.
pub fn read_token_file(path: &Path) -> Result<String, CliError> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        CliError::Config(format!(
            "cannot read token file {shown}: {e}; check --token-file / VSKY_TOKEN_FILE"
        ))
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::Config(format!("cannot read token file {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(CliError::Config(format!(
            "token file {shown} is larger than {MAX_TOKEN_FILE_BYTES} bytes; is it the right file?"
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| CliError::Config(format!("token file {shown} is not UTF-8 text")))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or_else(|| {
            CliError::Config(format!(
                "token file {shown} holds no token (only blank lines and # comments)"
            ))
        })?;
    check_token(token, &format!("token file {shown}"))
}

/// A token goes into an HTTP header: refuse characters a header cannot
/// carry here, with a clear message, rather than let the request fail later
/// as a puzzling transport error.
fn check_token(token: &str, source: &str) -> Result<String, CliError> {
    if token.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(token.to_string())
    } else {
        Err(CliError::Config(format!(
            "the token in {source} contains spaces or non-ASCII characters; \
             a token is a single word of printable ASCII"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::error::ExitStatus;

    /// A file in the system temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> Self {
            let path =
                std::env::temp_dir().join(format!("vsky-cli-test-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn global(token_file: Option<PathBuf>) -> GlobalArgs {
        GlobalArgs {
            manager: "http://127.0.0.1:1".into(),
            token_file,
            ca_file: None,
            json: false,
            timeout: Duration::from_secs(7),
        }
    }

    fn config_message(r: Result<String, CliError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.exit_status(), ExitStatus::Config);
        e.to_string()
    }

    #[test]
    fn token_file_skips_comments_and_blank_lines_and_trims() {
        let f = TempFile::new(
            "comments",
            b"# admin token for vsky\n\n   \n  # indented comment\n  s3cr3t-T0ken \nsecond\n",
        );
        assert_eq!(read_token_file(&f.0).unwrap(), "s3cr3t-T0ken");
        let f = TempFile::new("crlf", b"tok\r\n");
        assert_eq!(read_token_file(&f.0).unwrap(), "tok");
        let f = TempFile::new("no-newline", b"tok");
        assert_eq!(read_token_file(&f.0).unwrap(), "tok");
    }

    #[test]
    fn token_file_problems_are_config_errors() {
        let missing = std::env::temp_dir().join("vsky-cli-test-definitely-missing.token");
        let msg = config_message(read_token_file(&missing));
        assert!(
            msg.contains("cannot read token file") && msg.contains("definitely-missing"),
            "{msg}"
        );

        let f = TempFile::new("only-comments", b"# nothing here\n\n");
        assert!(config_message(read_token_file(&f.0)).contains("holds no token"));

        let f = TempFile::new("space", b"two words\n");
        assert!(config_message(read_token_file(&f.0)).contains("single word"));

        let f = TempFile::new("binary", b"\xff\xfe\n");
        assert!(config_message(read_token_file(&f.0)).contains("not UTF-8"));

        let f = TempFile::new("huge", &vec![b'a'; 70 * 1024]);
        assert!(config_message(read_token_file(&f.0)).contains("larger than"));

        let dir = std::env::temp_dir();
        assert!(config_message(read_token_file(&dir)).contains("cannot read token file"));
    }

    #[test]
    fn token_file_wins_over_the_environment() {
        let f = TempFile::new("precedence", b"from-file\n");
        let c = client_config(&global(Some(f.0.clone())), Some("from-env".into())).unwrap();
        assert_eq!(c.token.as_deref(), Some("from-file"));
        assert_eq!(c.timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.manager_url, "http://127.0.0.1:1");

        let c = client_config(&global(None), Some("  from-env\n".into())).unwrap();
        assert_eq!(c.token.as_deref(), Some("from-env"));
        let c = client_config(&global(None), Some("   ".into())).unwrap();
        assert_eq!(c.token, None);
        let c = client_config(&global(None), None).unwrap();
        assert_eq!(c.token, None);
        let e = client_config(&global(None), Some("a b".into())).unwrap_err();
        assert!(e.to_string().contains("VSKY_TOKEN"), "{e}");
    }
}
