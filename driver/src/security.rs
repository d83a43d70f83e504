//! Who may change what: the admin test of `IRP_MJ_CREATE`, as plain Rust over SID bytes.
//!
//! qosmark treats a caller as an administrator (the engine's [`Privilege::Admin`]) when its
//! token — the client token if the opener impersonates (at `SecurityImpersonation` level or
//! above: [`effective_token_usable`]), else the primary token, captured in the create
//! request's security context — holds **BUILTIN\Administrators** (S-1-5-32-544)
//! or **BUILTIN\Network Configuration Operators** (S-1-5-32-556) as an *enabled* group that is
//! not deny-only. Under UAC a non-elevated administrator's token carries Administrators with
//! `SE_GROUP_USE_FOR_DENY_ONLY` and without `SE_GROUP_ENABLED`, so it counts as a user, as it
//! does for qWAVE's `QOSSetOutgoingDSCPValue`. The Windows part (`device` module) lists the
//! token's groups with `SeQueryInformationToken(TokenGroups)` and hands each group's SID bytes
//! (`RtlLengthSid` long) and attributes to [`is_privileged_group`].
//!
//! [`Privilege::Admin`]: qosmark_abi::Privilege::Admin

/// `SE_GROUP_ENABLED` (winnt.h).
pub const SE_GROUP_ENABLED: u32 = 0x0000_0004;
/// `SE_GROUP_USE_FOR_DENY_ONLY` (winnt.h).
pub const SE_GROUP_USE_FOR_DENY_ONLY: u32 = 0x0000_0010;

/// S-1-5-32-544 in its binary form: revision 1, 2 sub-authorities, identifier authority 5
/// (NT AUTHORITY, 6 bytes big-endian), sub-authorities 32 and 544 (little-endian `u32`s).
pub const BUILTIN_ADMINISTRATORS: [u8; 16] = sid_builtin(544);
/// S-1-5-32-556, BUILTIN\Network Configuration Operators.
pub const BUILTIN_NETWORK_CONFIGURATION_OPERATORS: [u8; 16] = sid_builtin(556);

const fn sid_builtin(rid: u32) -> [u8; 16] {
    let r = rid.to_le_bytes();
    [1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, r[0], r[1], r[2], r[3]]
}

/// `SecurityImpersonation` (winnt.h `SECURITY_IMPERSONATION_LEVEL`: `SecurityAnonymous` 0,
/// `SecurityIdentification` 1, `SecurityImpersonation` 2, `SecurityDelegation` 3).
pub const SECURITY_IMPERSONATION: i32 = 2;

/// Whether the effective token of a create's subject context may be used for the admin test.
///
/// The effective token is the client token when the opener impersonates, else the primary
/// token (`SeQuerySubjectContextToken`). Microsoft's page for that macro says an impersonation
/// token must be at `SecurityImpersonation` level or higher before it is used for an
/// authorization decision; an anonymous or identification-level client token (which a
/// kernel-mode opener, whose create skips the I/O manager's access check, can carry) is
/// therefore not used, and the caller is a user (the safe side).
#[must_use]
pub fn effective_token_usable(has_client_token: bool, impersonation_level: i32) -> bool {
    !has_client_token || impersonation_level >= SECURITY_IMPERSONATION
}

/// Whether one token group makes the caller an administrator for qosmark.
#[must_use]
pub fn is_privileged_group(sid: &[u8], attributes: u32) -> bool {
    let enabled = attributes & SE_GROUP_ENABLED != 0;
    let deny_only = attributes & SE_GROUP_USE_FOR_DENY_ONLY != 0;
    enabled
        && !deny_only
        && (sid == BUILTIN_ADMINISTRATORS || sid == BUILTIN_NETWORK_CONFIGURATION_OPERATORS)
}

#[cfg(test)]
mod tests {
    use super::*;

    // SE_GROUP_MANDATORY | SE_GROUP_ENABLED_BY_DEFAULT | SE_GROUP_ENABLED, the usual
    // attributes of an elevated token's Administrators entry (winnt.h: 0x1 | 0x2 | 0x4).
    const ELEVATED: u32 = 0x7;
    // A UAC-filtered token's Administrators entry: deny-only, not enabled (0x10).
    const FILTERED: u32 = 0x10;

    #[test]
    fn sid_bytes_are_the_documented_ones() {
        // Written out by hand: 01 02 | 00 00 00 00 00 05 | 20 00 00 00 | 20 02 00 00.
        assert_eq!(
            BUILTIN_ADMINISTRATORS,
            [1, 2, 0, 0, 0, 0, 0, 5, 0x20, 0, 0, 0, 0x20, 0x02, 0, 0]
        );
        // 556 = 0x22C.
        assert_eq!(
            BUILTIN_NETWORK_CONFIGURATION_OPERATORS,
            [1, 2, 0, 0, 0, 0, 0, 5, 0x20, 0, 0, 0, 0x2C, 0x02, 0, 0]
        );
    }

    #[test]
    fn client_tokens_below_impersonation_level_are_not_used() {
        // Primary token (no impersonation): the level field is meaningless, always usable.
        assert!(effective_token_usable(false, 0));
        // winnt.h values written out: Anonymous 0, Identification 1, Impersonation 2,
        // Delegation 3.
        assert!(!effective_token_usable(true, 0));
        assert!(!effective_token_usable(true, 1));
        assert!(effective_token_usable(true, 2));
        assert!(effective_token_usable(true, 3));
        assert!(!effective_token_usable(true, -1));
    }

    #[test]
    fn enabled_admin_or_nco_only() {
        assert!(is_privileged_group(&BUILTIN_ADMINISTRATORS, ELEVATED));
        assert!(is_privileged_group(
            &BUILTIN_NETWORK_CONFIGURATION_OPERATORS,
            ELEVATED
        ));
        assert!(!is_privileged_group(&BUILTIN_ADMINISTRATORS, FILTERED));
        assert!(!is_privileged_group(&BUILTIN_ADMINISTRATORS, 0));
        assert!(!is_privileged_group(
            &BUILTIN_ADMINISTRATORS,
            SE_GROUP_ENABLED | SE_GROUP_USE_FOR_DENY_ONLY
        ));
        // BUILTIN\Users (S-1-5-32-545) and Authenticated Users (S-1-5-11) are not enough.
        let users = sid_builtin(545);
        assert!(!is_privileged_group(&users, ELEVATED));
        let authenticated = [1u8, 1, 0, 0, 0, 0, 0, 5, 11, 0, 0, 0];
        assert!(!is_privileged_group(&authenticated, ELEVATED));
        // A prefix or an extension of the SID is another SID.
        assert!(!is_privileged_group(
            &BUILTIN_ADMINISTRATORS[..15],
            ELEVATED
        ));
        let mut longer = BUILTIN_ADMINISTRATORS.to_vec();
        longer.push(0);
        assert!(!is_privileged_group(&longer, ELEVATED));
        assert!(!is_privileged_group(&[], ELEVATED));
    }
}
