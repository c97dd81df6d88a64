//! Polaris response codes the filter acts on (`v1.Code`; HTTP status = code / 1000).

pub const EXECUTE_SUCCESS: u32 = 200_000;
pub const DATA_NO_CHANGE: u32 = 200_001;
pub const EXISTED_RESOURCE: u32 = 400_201;
pub const NOT_FOUND_RESOURCE: u32 = 400_202;
pub const NOT_FOUND_SERVICE: u32 = 400_301;
pub const NOT_FOUND_INSTANCE: u32 = 400_303;
pub const HEALTH_CHECK_NOT_OPEN: u32 = 400_140;

/// polaris-go counts `2xxxxx` as success (`pkg/model/error.go: IsSuccessResultCode`).
pub fn is_success(code: u32) -> bool {
    code / 1000 == 200
}

/// A code's name (`v1.Code`) and what it means for this filter, for log lines and replies.
pub fn describe(code: u32) -> (&'static str, &'static str) {
    match code {
        EXECUTE_SUCCESS => ("ExecuteSuccess", "done"),
        DATA_NO_CHANGE => ("DataNoChange", "nothing changed since the revision sent"),
        200_002 => ("NoNeedUpdate", "nothing to change"),
        400_000 => ("BadRequest", "the server refused the request"),
        400_001 => ("ParseException", "the server could not parse the request"),
        400_002 => ("EmptyRequest", "the request carried nothing"),
        400_103 => ("InvalidParameter", "a field of the request is invalid"),
        400_110 => ("InvalidNamespaceName", "the namespace name is invalid"),
        400_120 => ("InvalidServiceName", "the service name is invalid"),
        400_122 => (
            "InvalidServiceToken",
            "the service token is wrong (provider.token)",
        ),
        400_130 => ("InvalidInstanceID", "the instance id is invalid"),
        400_131 => ("InvalidInstanceHost", "the host is invalid (provider.host)"),
        400_132 => ("InvalidInstancePort", "the port is invalid (provider.port)"),
        400_136 => ("InvalidInstanceProtocol", "the protocol is invalid"),
        400_137 => ("InvalidInstanceVersion", "the version is invalid"),
        HEALTH_CHECK_NOT_OPEN => (
            "HealthCheckNotOpen",
            "the instance has no heartbeat health check (registered by someone else, or the \
             server's health checking is off); registering again",
        ),
        400_141 => (
            "HeartbeatOnDisabledIns",
            "heartbeat on an instance whose health check is disabled",
        ),
        400_142 => ("HeartbeatExceedLimit", "heartbeats too frequent"),
        400_150 => (
            "InvalidMetadata",
            "the metadata is invalid (provider.metadata)",
        ),
        EXISTED_RESOURCE => ("ExistedResource", "the instance already exists"),
        NOT_FOUND_RESOURCE => (
            "NotFoundResource",
            "Polaris does not know the instance (deregistered, or the server lost its store); \
             registering again",
        ),
        400_208 => (
            "SameInstanceRequest",
            "another registration of this instance is in progress",
        ),
        NOT_FOUND_SERVICE => ("NotFoundService", "the service does not exist"),
        NOT_FOUND_INSTANCE => (
            "NotFoundInstance",
            "Polaris does not know the instance; registering again",
        ),
        400_305 => ("NotFoundNamespace", "the namespace does not exist"),
        400_401 => (
            "ClientAPINotOpen",
            "the server's client API is not open for this call (apiservers include list)",
        ),
        401_000 => (
            "Unauthorized",
            "client auth is on and the token is missing or wrong (token)",
        ),
        401_001 => ("NotAllowedAccess", "the token may not do this"),
        403_003 => ("APIRateLimit", "the server rate-limits this API"),
        429_001 => (
            "InstanceTooManyRequests",
            "the server rate-limits registrations of this instance",
        ),
        429_002 => ("IPRateLimit", "the server rate-limits this address"),
        500_000 => ("ExecuteException", "the server failed"),
        500_001 => ("StoreLayerException", "the server's store failed"),
        500_007 => ("HeartbeatException", "the server's health checker failed"),
        500_008 => (
            "InstanceRegisTimeout",
            "the server timed out registering the instance",
        ),
        c if c / 1000 == 200 => ("success", "done"),
        c if c / 100_000 == 4 => ("client error", "the server refused the request"),
        _ => ("server error", "the server failed"),
    }
}

/// `CODE Name (meaning)`, as logged.
pub fn render(code: u32) -> String {
    let (name, meaning) = describe(code);
    format!("{code} {name} ({meaning})")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn codes_render_with_name_and_meaning() {
        assert!(render(400_202).starts_with("400202 NotFoundResource (Polaris does not know"));
        assert_eq!(describe(400_999).0, "client error");
        assert_eq!(describe(503_000).0, "server error");
        assert_eq!(describe(200_123).0, "success");
    }
}
