//! One bounded fetch, shared by discovery and registration: at most `MAX_DOCUMENT_BYTES` of
//! the answer read.

use std::time::Duration;

/// Largest metadata document read.
pub const MAX_DOCUMENT_BYTES: usize = 64 << 10;
/// Time one fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One answer: its status, challenge, body and `Cache-Control` max-age.
pub(crate) struct Answer {
    pub status: u16,
    pub challenge: Option<String>,
    pub body: Vec<u8>,
    pub max_age: Option<u64>,
}

/// Sends `req` and reads at most `MAX_DOCUMENT_BYTES` of its answer.
pub(crate) async fn read(req: reqwest::RequestBuilder, url: &str) -> Result<Answer, String> {
    let mut resp = crate::outbound::send(req)
        .await
        .map_err(|e| format!("no answer from {url}: {}", crate::outbound::describe(&e)))?;
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let max_age = crate::outbound::cache_max_age(resp.headers());
    let too_large = || format!("{url} answered more than {MAX_DOCUMENT_BYTES} bytes");
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading {url}: {}", crate::outbound::describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        challenge,
        body,
        max_age,
    })
}
