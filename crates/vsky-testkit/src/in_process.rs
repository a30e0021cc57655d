//! A manager served by the test process itself: the real HTTP stack on
//! loopback over a redb store in a scratch directory, on the caller's
//! tokio runtime. It shuts down when its handle is dropped (and at the
//! latest with that runtime).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use vsky_api::Client;
use vsky_manager::store::redb::RedbStore;
use vsky_manager::{Manager, RecoveryConfig, Tokens};
use vsky_model::Settings;

use crate::rest::client;
use crate::tokens::{ADMIN_TOKEN, TokenFiles, write_tokens};

/// Recovery for tests without agents for every server: a silent server is
/// kept (an hour's grace), not declared failed.
pub fn patient_recovery() -> RecoveryConfig {
    RecoveryConfig {
        server_grace: Duration::from_secs(3600),
        ..RecoveryConfig::default()
    }
}

/// A running in-process manager; dropping it shuts the manager down.
#[must_use = "the manager shuts down when this is dropped"]
pub struct InProcessManager {
    pub url: String,
    pub tokens: TokenFiles,
    _shutdown: oneshot::Sender<()>,
}

impl InProcessManager {
    /// A manager with chunks of `chunk_bytes` and [`patient_recovery`],
    /// its store and token files in `dir`.
    pub async fn start(dir: &Path, chunk_bytes: u64) -> InProcessManager {
        Self::start_with(dir, chunk_bytes, patient_recovery()).await
    }

    /// Like [`InProcessManager::start`], with the recovery loop's settings.
    pub async fn start_with(
        dir: &Path,
        chunk_bytes: u64,
        recovery: RecoveryConfig,
    ) -> InProcessManager {
        let tokens = write_tokens(dir);
        let store = RedbStore::open(&dir.join("data")).expect("opening the redb store");
        let manager = Manager::open(Box::new(store), Settings::new(chunk_bytes), true)
            .expect("opening the manager");
        let loaded = Tokens::load(&tokens.admin, Some(&tokens.agents)).expect("loading the tokens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("a bound address"));
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(vsky_manager::run(
            Arc::new(manager),
            loaded,
            listener,
            None,
            recovery,
            async move {
                // Either a send or the handle's drop ends the wait.
                let _ = stopped.await;
            },
        ));
        InProcessManager {
            url,
            tokens,
            _shutdown: shutdown,
        }
    }

    pub fn client(&self, token: &str) -> Client {
        client(&self.url, token)
    }

    pub fn admin(&self) -> Client {
        self.client(ADMIN_TOKEN)
    }
}
