//! OAuth scope strings: a leaf shared by the flows (client scopes) and the vault (upstream
//! scopes).

/// Splits a space-separated scope string into its tokens (empty tokens dropped).
pub fn split_scope(scope: &str) -> Vec<String> {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
