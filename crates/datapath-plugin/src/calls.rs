//! The Datapath calls (see the crate docs for the semantics and why).

use serde::Deserialize;
use serde_json::{Value, json};
use smapi::error::codes;
use smapi::http::{HttpClient, HttpError, segment};
use smapi::runner::Handler;
use smapi::{Args, SmapiError, SmapiResult};

use crate::config::DatapathConfig;
use crate::uri::VolumeUri;

pub const CALLS: &[(&str, Handler)] = &[
    ("Plugin.Query", plugin_query),
    ("Datapath.open", datapath_open),
    ("Datapath.attach", datapath_attach),
    ("Datapath.activate", datapath_activate),
    ("Datapath.activate_readonly", datapath_activate_readonly),
    ("Datapath.deactivate", datapath_deactivate),
    ("Datapath.detach", datapath_detach),
    ("Datapath.close", datapath_close),
];

fn plugin_query(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    Ok(json!({
        "plugin": crate::uri::SCHEME,
        "name": "VastSky datapath plugin",
        "description": "Assembles VastSky volumes in this host's kernel (NBD + dm-raid) through the local vsky-agent and hands them to blkback",
        "vendor": "VastSky",
        "copyright": "VastSky contributors, Apache-2.0",
        "version": env!("CARGO_PKG_VERSION"),
        "required_api_version": "5.0",
        // No NONPERSISTENT: we cannot discard writes at close.
        "features": [],
        "configuration": {},
        "required_cluster_stack": [],
    }))
}

/// The `{"implementations": …}` answer of attach: XenDisk first (xenopsd
/// requires it for a guest disk; `vbd` is kernel blkback on the device),
/// then BlockDevice (what dom0 users and xenopsd's params lookup use).
pub fn backend(device: &str) -> Value {
    json!({
        "implementations": [
            ["XenDisk", {"backend_type": "vbd", "params": device, "extra": {}}],
            ["BlockDevice", {"path": device}],
        ]
    })
}

fn datapath_open(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    VolumeUri::parse(args.str("uri")?)?;
    if !args.bool("persistent")? {
        return Err(SmapiError::unimplemented(
            "non-persistent disks (writes discarded at close) are not supported by VastSky; make the VDI persistent (on-boot=persist)",
        ));
    }
    Ok(Value::Null)
}

fn datapath_attach(args: &Args) -> SmapiResult<Value> {
    args.str("dbg")?;
    let uri = VolumeUri::parse(args.str("uri")?)?;
    args.str("domain")?;
    Ok(backend(&uri.device()))
}

/// The agent's local API.
struct Agent {
    http: HttpClient,
    url: String,
}

#[derive(Deserialize)]
struct Attached {
    device: String,
}

#[derive(Deserialize)]
struct LocalVolume {
    name: String,
}

impl Agent {
    fn connect() -> SmapiResult<Agent> {
        let cfg = DatapathConfig::load()?;
        let http = HttpClient::new(&cfg.http_config()?)
            .map_err(|e| SmapiError::new(codes::INVALID_CONFIGURATION, e.to_string()))?;
        Ok(Agent {
            http,
            url: cfg.agent_url,
        })
    }

    fn error(&self, e: HttpError, volume: &str) -> SmapiError {
        match e {
            HttpError::Api {
                status: 401 | 403,
                message,
                ..
            } => SmapiError::new(
                codes::UNAUTHORIZED,
                format!(
                    "the local vsky-agent refused the token ({message}); token_file in {} must hold the agent's --api-token-file token",
                    crate::config::config_path().display()
                ),
            ),
            HttpError::Api {
                status: 404,
                message,
                ..
            } => SmapiError::new(codes::VOLUME_DOES_NOT_EXIST, message),
            HttpError::Api { code, message, .. } if code == "storage_only" => SmapiError::new(
                codes::CONFLICT,
                format!(
                    "{message}; volume '{volume}' can be activated only on hosts whose vsky-agent runs without --storage-only"
                ),
            ),
            // Also while the other host is still releasing it (its
            // deactivate is under way, or it died: an admin fences it).
            HttpError::Api { code, message, .. }
                if code == "attached_elsewhere" || code == "releasing_elsewhere" =>
            {
                SmapiError::new(codes::ACTIVATED_ON_ANOTHER_HOST, message)
            }
            HttpError::Api { code, message, .. } => {
                let c = match code.as_str() {
                    // `busy`: the device is held open on this host;
                    // `activations_unknown`: the agent lost track of who
                    // uses it and will not guess.
                    "conflict" | "busy" | "activations_unknown" => codes::CONFLICT,
                    "manager_unreachable" => codes::BACKEND_UNREACHABLE,
                    _ => codes::BACKEND_ERROR,
                };
                SmapiError::new(c, format!("vsky-agent: {message} [{code}]"))
            }
            HttpError::Transport { detail, .. } => SmapiError::new(
                codes::BACKEND_UNREACHABLE,
                format!(
                    "cannot reach the local vsky-agent at {}: {detail}; is vsky-agent running with --api-token-file?",
                    self.url
                ),
            ),
            other => SmapiError::new(codes::BACKEND_ERROR, other.to_string()),
        }
    }

    fn assembled_here(&self, volume: &str) -> SmapiResult<bool> {
        let list: Vec<LocalVolume> = self
            .http
            .get("/v1/volumes")
            .map_err(|e| self.error(e, volume))?;
        Ok(list.iter().any(|v| v.name == volume))
    }

    /// Ends activations of the volume on this host as `body` says (see
    /// [`release_body`]); with the last one gone the agent tears the
    /// device down and releases the volume in the manager. Idempotent.
    fn release(&self, volume: &str, body: &Value) -> SmapiResult<()> {
        let path = format!("/v1/volumes/{}/detach", segment(volume));
        match self.http.post::<_, Value>(&path, body) {
            Ok(_) => Ok(()),
            // The volume is gone from the manager, or another host holds
            // it: either way there is nothing of ours to tear down unless
            // a device is still assembled here.
            Err(HttpError::Api {
                status: 404 | 409, ..
            }) if !self.assembled_here(volume)? => Ok(()),
            Err(e) => Err(self.error(e, volume)),
        }
    }
}

/// The agent's attach request: this domain's activation, read-write or
/// read-only. The volume plugin declares VDI_ACTIVATE_READONLY, so xapi
/// calls `activate_readonly` for a disk attached read-only (a backup's
/// read of a snapshot, a read-only VBD): a snapshot is then read on this
/// host alongside any others, any other volume is attached here alone.
fn activate_body(domain: &str, read_only: bool) -> Value {
    json!({"domain": domain, "mode": if read_only { "ro" } else { "rw" }})
}

/// The agent's detach request: end `domain`'s activation (deactivate,
/// detach), or, with no domain (`close` has none), release only a volume
/// no domain holds, so a close never tears a device down under another
/// domain's activation.
fn release_body(domain: Option<&str>) -> Value {
    match domain {
        Some(d) => json!({"domain": d}),
        None => json!({"if_unused": true}),
    }
}

fn datapath_activate(args: &Args) -> SmapiResult<Value> {
    activate(args, false)
}

fn datapath_activate_readonly(args: &Args) -> SmapiResult<Value> {
    activate(args, true)
}

fn activate(args: &Args, read_only: bool) -> SmapiResult<Value> {
    args.str("dbg")?;
    let uri = VolumeUri::parse(args.str("uri")?)?;
    let domain = args.str("domain")?;
    let agent = Agent::connect()?;
    let path = format!("/v1/volumes/{}/attach", segment(&uri.volume));
    let attached: Attached = agent
        .http
        .post(&path, &activate_body(domain, read_only))
        .map_err(|e| agent.error(e, &uri.volume))?;
    if attached.device != uri.device() {
        return Err(SmapiError::new(
            codes::BACKEND_ERROR,
            format!(
                "vsky-agent assembled volume '{}' as {}, not {} as Datapath.attach answered; agent and plugin versions differ",
                uri.volume,
                attached.device,
                uri.device()
            ),
        ));
    }
    Ok(Value::Null)
}

fn release(args: &Args, needs_domain: bool) -> SmapiResult<Value> {
    args.str("dbg")?;
    let uri = VolumeUri::parse(args.str("uri")?)?;
    let domain = if needs_domain {
        Some(args.str("domain")?)
    } else {
        None
    };
    Agent::connect()?.release(&uri.volume, &release_body(domain))?;
    Ok(Value::Null)
}

fn datapath_deactivate(args: &Args) -> SmapiResult<Value> {
    release(args, true)
}

fn datapath_detach(args: &Args) -> SmapiResult<Value> {
    release(args, true)
}

fn datapath_close(args: &Args) -> SmapiResult<Value> {
    release(args, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_answers_xendisk_then_blockdevice_without_an_agent() {
        let a = Args::parse(r#"{"dbg":"t","uri":"vsky://sr-1/v1","domain":"3"}"#).unwrap();
        let b = datapath_attach(&a).unwrap();
        let imps = b["implementations"].as_array().unwrap();
        assert_eq!(imps[0][0], "XenDisk");
        assert_eq!(imps[0][1]["backend_type"], "vbd");
        assert_eq!(imps[0][1]["params"], "/dev/mapper/vsky-v1");
        assert_eq!(
            imps[1],
            json!(["BlockDevice", {"path": "/dev/mapper/vsky-v1"}])
        );
    }

    #[test]
    fn open_accepts_only_persistent_disks() {
        let ok = Args::parse(r#"{"dbg":"t","uri":"vsky://sr-1/v1","persistent":true}"#).unwrap();
        assert_eq!(datapath_open(&ok).unwrap(), Value::Null);
        let np = Args::parse(r#"{"dbg":"t","uri":"vsky://sr-1/v1","persistent":false}"#).unwrap();
        assert_eq!(datapath_open(&np).unwrap_err().code, codes::UNIMPLEMENTED);
    }

    #[test]
    fn activations_and_releases_name_their_domain() {
        assert_eq!(
            activate_body("7", false),
            json!({"domain": "7", "mode": "rw"})
        );
        assert_eq!(
            activate_body("u0-x", true),
            json!({"domain": "u0-x", "mode": "ro"})
        );
        assert_eq!(release_body(Some("u0-a_b")), json!({"domain": "u0-a_b"}));
        // close names no domain: it must not end anyone's activation.
        assert_eq!(release_body(None), json!({"if_unused": true}));
    }

    #[test]
    fn deactivate_and_detach_need_their_domain() {
        for call in [
            datapath_deactivate,
            datapath_detach,
            datapath_activate,
            datapath_activate_readonly,
        ] {
            let a = Args::parse(r#"{"dbg":"t","uri":"vsky://sr-1/v1"}"#).unwrap();
            let e = call(&a).unwrap_err();
            assert!(
                e.params.iter().any(|p| p.contains("domain")),
                "{:?}",
                e.params
            );
        }
    }

    #[test]
    fn conflicts_on_another_head_are_activated_on_another_host() {
        let agent = Agent {
            http: HttpClient::new(&smapi::http::HttpConfig {
                base_urls: vec!["http://127.0.0.1:1".into()],
                token: None,
                ca_file: None,
                timeout: std::time::Duration::from_secs(1),
            })
            .unwrap(),
            url: "http://127.0.0.1:1".into(),
        };
        let e = agent.error(
            HttpError::Api {
                status: 409,
                code: "attached_elsewhere".into(),
                message: "volume 'v' is attached to server 'h2'; detach it there first".into(),
            },
            "v",
        );
        assert_eq!(e.code, codes::ACTIVATED_ON_ANOTHER_HOST);
        // Still being released by the other host (its deactivate runs).
        let e = agent.error(
            HttpError::Api {
                status: 409,
                code: "releasing_elsewhere".into(),
                message: "volume 'v' is being released by server 'h2'".into(),
            },
            "v",
        );
        assert_eq!(e.code, codes::ACTIVATED_ON_ANOTHER_HOST);
        // A deactivate of a device held open here fails with the agent's
        // advice.
        let e = agent.error(
            HttpError::Api {
                status: 409,
                code: "busy".into(),
                message: "volume 'v' cannot be detached: in use".into(),
            },
            "v",
        );
        assert_eq!(e.code, codes::CONFLICT);
        assert!(
            e.params.iter().any(|p| p.contains("in use")),
            "{:?}",
            e.params
        );
        // The agent could not read its activations file: it keeps the
        // device and says why.
        let e = agent.error(
            HttpError::Api {
                status: 409,
                code: "activations_unknown".into(),
                message: "volume 'v' stays assembled: the activations file could not be read"
                    .into(),
            },
            "v",
        );
        assert_eq!(e.code, codes::CONFLICT);
        let e = agent.error(
            HttpError::Api {
                status: 409,
                code: "storage_only".into(),
                message: "storage only".into(),
            },
            "v",
        );
        assert_eq!(e.code, codes::CONFLICT);
    }
}
