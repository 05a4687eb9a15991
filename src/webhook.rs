//! Dead-letter webhook: a thread that POSTs each JSON body to the configured
//! URL, with a timeout and a few retries, so the event loop never waits on it.

use std::time::Duration;

use crossbeam_channel::Sender;

const ATTEMPTS: u32 = 3;

/// Starts the sender thread; returns where to queue bodies.
pub fn spawn(url: String) -> std::io::Result<Sender<String>> {
    let (tx, rx) = crossbeam_channel::bounded::<String>(10_000);
    std::thread::Builder::new()
        .name("webhook".into())
        .spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .http_status_as_error(true)
                .build()
                .into();
            for body in rx {
                for attempt in 1..=ATTEMPTS {
                    let sent = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(body.as_bytes());
                    match sent {
                        Ok(_) => break,
                        Err(e) if attempt == ATTEMPTS => {
                            log::error!("webhook: giving up on {url}: {e}")
                        }
                        Err(e) => {
                            log::warn!("webhook: {url} failed ({e}), retrying");
                            std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                        }
                    }
                }
            }
        })?;
    Ok(tx)
}
