//! Polaris response codes the filter acts on (`v1.Code`; HTTP status = code / 1000).

pub const EXECUTE_SUCCESS: u32 = 200_000;
pub const DATA_NO_CHANGE: u32 = 200_001;
pub const NOT_FOUND_RESOURCE: u32 = 400_202;
pub const NOT_FOUND_SERVICE: u32 = 400_301;

/// polaris-go counts `2xxxxx` as success (`pkg/model/error.go: IsSuccessResultCode`).
pub fn is_success(code: u32) -> bool {
    code / 1000 == 200
}
