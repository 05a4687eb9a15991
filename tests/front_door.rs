//! What a newcomer meets first: the landing page at `/` on the WebSocket
//! port, with the version and working links to the demos, client and docs.

mod common;

use common::Server;

#[test]
fn landing_page_is_served_with_the_version_and_its_links_work() {
    let server = Server::start(2, "");
    let (status, page) = server.http_with("GET", "/", "", "");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(concat!("syncd ", env!("CARGO_PKG_VERSION"))),
        "{page}"
    );
    for target in [
        "/demo/seats",
        "/demo/chat",
        "/syncd.js",
        "/docs/protocol.md",
    ] {
        assert!(page.contains(&format!("href=\"{target}\"")), "{target}");
        let (status, body) = server.http_with("GET", target, "", "");
        assert_eq!(status, 200, "{target}: {body}");
        assert!(!body.is_empty(), "{target}");
    }
    let (_, script) = server.http_with("GET", "/syncd.js", "", "");
    assert!(page.contains("import { SyncClient } from \"/syncd.js\""));
    assert!(
        script.contains("export class SyncClient"),
        "the page's import resolves"
    );
}
