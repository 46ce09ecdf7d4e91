//! Fault injection for the tests and `loadtest chaos` (`FAILPOINTS=...`).

/// The failpoints `FAILPOINTS` names, set up until the returned guard
/// drops, in a build with them (`enabled`: the service's `failpoints`
/// feature). A build without them refuses a set `FAILPOINTS` rather than
/// ignore it.
pub fn set_up(enabled: bool) -> Result<Option<fail::FailScenario<'static>>, FailpointsUnavailable> {
    if enabled {
        return Ok(Some(fail::FailScenario::setup()));
    }
    if std::env::var_os("FAILPOINTS").is_some() {
        return Err(FailpointsUnavailable);
    }
    Ok(None)
}

/// `FAILPOINTS` is set in a build without failpoints.
#[derive(Debug, thiserror::Error)]
#[error("FAILPOINTS is set, but this build has no failpoints (build with --features failpoints)")]
pub struct FailpointsUnavailable;
