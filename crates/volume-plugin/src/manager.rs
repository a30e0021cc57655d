//! The manager's REST API as the volume plugin uses it, and the mapping of
//! its errors onto SMAPIv3 error codes.
//!
//! Requests and answers are `vsky_api::types`, the API's one contract;
//! only the transport differs from `vsky_api::Client` (blocking, see
//! `smapi::http`). A `not_found` means different things in different calls
//! (a missing SR or a missing VDI), so callers say which code it becomes.

use smapi::error::codes;
use smapi::http::{HttpClient, HttpConfig, HttpError, segment};
use smapi::{SmapiError, SmapiResult};
use vsky_api::types::{
    ClusterSummary, CreateGroup, CreateVolume, Group, NewVolumeName, ResizeVolume, RevertVolume,
    UpdateGroup, UpdateVolume, Volume, VolumeDetail,
};

use crate::config::SrConfig;

pub struct Manager {
    http: HttpClient,
    /// For requests that need a longer timeout (a grow of an attached
    /// volume answers once its head serves the new size).
    http_config: HttpConfig,
    urls: String,
}

/// What a `not_found` answer means for the call at hand.
#[derive(Clone, Copy, Debug)]
pub enum Missing {
    Sr,
    Volume,
}

/// Maps a manager error onto the SMAPIv3 error the admin sees.
pub fn map_error(e: HttpError, missing: Missing, urls: &str) -> SmapiError {
    match e {
        HttpError::Api {
            status: 404,
            message,
            ..
        } => match missing {
            Missing::Sr => SmapiError::new(codes::SR_DOES_NOT_EXIST, message),
            Missing::Volume => SmapiError::new(codes::VOLUME_DOES_NOT_EXIST, message),
        },
        HttpError::Api {
            status: 401 | 403,
            message,
            ..
        } => SmapiError::new(
            codes::UNAUTHORIZED,
            format!(
                "the manager refused the token ({message}); check device-config:token_file holds the admin token"
            ),
        ),
        HttpError::Api { code, message, .. } => {
            let c = match code.as_str() {
                "invalid_argument" | "payload_too_large" => codes::INVALID_ARGUMENT,
                "not_enough_space" | "not_enough_servers" => codes::NOT_ENOUGH_SPACE,
                "conflict" | "already_exists" => codes::CONFLICT,
                _ => codes::BACKEND_ERROR,
            };
            SmapiError::new(c, format!("manager: {message} [{code}]"))
        }
        HttpError::Transport { url, detail } => SmapiError::new(
            codes::BACKEND_UNREACHABLE,
            format!(
                "cannot reach the VastSky manager ({urls}); last tried {url}: {detail}; check device-config:manager and that vsky-manager is running"
            ),
        ),
        HttpError::Decode { .. } => SmapiError::new(
            codes::BACKEND_ERROR,
            format!("{e}; is device-config:manager a VastSky manager?"),
        ),
        HttpError::Config(m) => SmapiError::new(codes::INVALID_CONFIGURATION, m),
    }
}

const API: &str = vsky_api::API_PREFIX;

impl Manager {
    pub fn connect(config: &SrConfig) -> SmapiResult<Manager> {
        let http_config = config.http_config()?;
        let http = HttpClient::new(&http_config)
            .map_err(|e| SmapiError::new(codes::INVALID_CONFIGURATION, e.to_string()))?;
        Ok(Manager {
            http,
            http_config,
            urls: config.managers.join(", "),
        })
    }

    fn err(&self, missing: Missing) -> impl FnOnce(HttpError) -> SmapiError + '_ {
        move |e| map_error(e, missing, &self.urls)
    }

    pub fn cluster(&self) -> SmapiResult<ClusterSummary> {
        self.http
            .get(&format!("{API}/cluster"))
            .map_err(self.err(Missing::Sr))
    }

    pub fn groups(&self) -> SmapiResult<Vec<Group>> {
        self.http
            .get(&format!("{API}/groups"))
            .map_err(self.err(Missing::Sr))
    }

    pub fn group(&self, name: &str) -> SmapiResult<Group> {
        self.http
            .get(&format!("{API}/groups/{}", segment(name)))
            .map_err(self.err(Missing::Sr))
    }

    pub fn create_group(&self, req: &CreateGroup) -> SmapiResult<Group> {
        self.http
            .post(&format!("{API}/groups"), req)
            .map_err(self.err(Missing::Sr))
    }

    pub fn update_group(&self, name: &str, req: &UpdateGroup) -> SmapiResult<Group> {
        self.http
            .patch(&format!("{API}/groups/{}", segment(name)), req)
            .map_err(self.err(Missing::Sr))
    }

    /// Deletes a group; the raw error is returned so the caller can tell
    /// "already gone" and "still holds volumes" apart.
    pub fn delete_group(&self, name: &str) -> Result<(), HttpError> {
        self.http.delete(&format!("{API}/groups/{}", segment(name)))
    }

    pub fn volumes_in(&self, group: &str) -> SmapiResult<Vec<Volume>> {
        self.http
            .get(&format!("{API}/volumes?group={}", segment(group)))
            .map_err(self.err(Missing::Sr))
    }

    pub fn volume(&self, name: &str) -> SmapiResult<Volume> {
        self.http
            .get::<VolumeDetail>(&format!("{API}/volumes/{}", segment(name)))
            .map(|d| d.volume)
            .map_err(self.err(Missing::Volume))
    }

    pub fn create_volume(&self, req: &CreateVolume) -> SmapiResult<Volume> {
        // A 404 here can only be the group (the volume is new).
        self.http
            .post::<_, VolumeDetail>(&format!("{API}/volumes"), req)
            .map(|d| d.volume)
            .map_err(self.err(Missing::Sr))
    }

    pub fn update_volume(&self, name: &str, req: &UpdateVolume) -> SmapiResult<Volume> {
        self.http
            .patch::<_, VolumeDetail>(&format!("{API}/volumes/{}", segment(name)), req)
            .map(|d| d.volume)
            .map_err(self.err(Missing::Volume))
    }

    pub fn resize_volume(&self, name: &str, size_bytes: u64) -> SmapiResult<Volume> {
        let patient = HttpConfig {
            timeout: self.http_config.timeout + vsky_api::RESIZE_EXTRA_WAIT,
            ..self.http_config.clone()
        };
        HttpClient::new(&patient)
            .map_err(|e| SmapiError::new(codes::INVALID_CONFIGURATION, e.to_string()))?
            .post::<_, VolumeDetail>(
                &format!("{API}/volumes/{}/resize", segment(name)),
                &ResizeVolume {
                    size_bytes,
                    wait_seconds: None,
                },
            )
            .map(|d| d.volume)
            .map_err(self.err(Missing::Volume))
    }

    /// Snapshot `snapshot` of thin volume `name`, without its keys. Of an
    /// attached volume the manager answers once the head has switched it
    /// onto its new top, so this waits longer than other calls.
    pub fn snapshot_volume(&self, name: &str, snapshot: &str) -> SmapiResult<Volume> {
        let patient = HttpConfig {
            timeout: self.http_config.timeout + vsky_api::SNAPSHOT_EXTRA_WAIT,
            ..self.http_config.clone()
        };
        HttpClient::new(&patient)
            .map_err(|e| SmapiError::new(codes::INVALID_CONFIGURATION, e.to_string()))?
            .post::<_, VolumeDetail>(
                &format!("{API}/volumes/{}/snapshot", segment(name)),
                &NewVolumeName {
                    name: snapshot.to_string(),
                    keys: Some(Default::default()),
                },
            )
            .map(|d| d.volume)
            .map_err(self.err(Missing::Volume))
    }

    /// Clone `clone` of snapshot or detached thin volume `source`, without
    /// its keys.
    pub fn clone_volume(&self, source: &str, clone: &str) -> SmapiResult<Volume> {
        self.http
            .post::<_, VolumeDetail>(
                &format!("{API}/volumes/{}/clone", segment(source)),
                &NewVolumeName {
                    name: clone.to_string(),
                    keys: Some(Default::default()),
                },
            )
            .map(|d| d.volume)
            .map_err(self.err(Missing::Volume))
    }

    /// Takes detached thin volume `name` back to its snapshot `snapshot`.
    pub fn revert_volume(&self, name: &str, snapshot: &str) -> SmapiResult<Volume> {
        self.http
            .post::<_, VolumeDetail>(
                &format!("{API}/volumes/{}/revert", segment(name)),
                &RevertVolume {
                    snapshot: snapshot.to_string(),
                },
            )
            .map(|d| d.volume)
            .map_err(self.err(Missing::Volume))
    }

    pub fn delete_volume(&self, name: &str) -> SmapiResult<()> {
        self.http
            .delete(&format!("{API}/volumes/{}", segment(name)))
            .map_err(self.err(Missing::Volume))
    }

    pub fn describe_error(&self, e: HttpError, missing: Missing) -> SmapiError {
        map_error(e, missing, &self.urls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> HttpError {
        HttpError::Api {
            status,
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn manager_errors_become_smapi_codes() {
        let m = |e, w| map_error(e, w, "http://m").code;
        assert_eq!(
            m(api(404, "not_found"), Missing::Sr),
            codes::SR_DOES_NOT_EXIST
        );
        assert_eq!(
            m(api(404, "not_found"), Missing::Volume),
            codes::VOLUME_DOES_NOT_EXIST
        );
        assert_eq!(
            m(api(401, "unauthorized"), Missing::Sr),
            codes::UNAUTHORIZED
        );
        assert_eq!(
            m(api(400, "invalid_argument"), Missing::Sr),
            codes::INVALID_ARGUMENT
        );
        assert_eq!(
            m(api(507, "not_enough_space"), Missing::Sr),
            codes::NOT_ENOUGH_SPACE
        );
        assert_eq!(m(api(409, "conflict"), Missing::Sr), codes::CONFLICT);
        assert_eq!(m(api(500, "internal"), Missing::Sr), codes::BACKEND_ERROR);
        let t = HttpError::Transport {
            url: "http://m/x".into(),
            detail: "refused".into(),
        };
        assert_eq!(m(t, Missing::Sr), codes::BACKEND_UNREACHABLE);
    }
}
