//! The landing page, the browser client, the demos and the docs, compiled
//! into the binary so any syncd serves them: `/`, `/syncd.js`,
//! `/syncd.d.ts`, `/demo/…` and `/docs/….md`.

use std::sync::OnceLock;

/// The content type and bytes of a static path, if it is one.
pub fn lookup(path: &str) -> Option<(&'static str, &'static [u8])> {
    const JS: &str = "text/javascript; charset=utf-8";
    const HTML: &str = "text/html; charset=utf-8";
    // Shown as text by every browser, unlike text/markdown which some download.
    const DOC: &str = "text/plain; charset=utf-8";
    Some(match path {
        "/" | "/index.html" => (HTML, landing_page()),
        "/syncd.js" => (JS, include_bytes!("../../public/syncd.js")),
        "/syncd.d.ts" => (
            "application/typescript; charset=utf-8",
            include_bytes!("../../public/syncd.d.ts"),
        ),
        "/demo" | "/demo/" => (HTML, include_bytes!("../../public/demo/index.html")),
        "/demo/seats" => (HTML, include_bytes!("../../public/demo/seats.html")),
        "/demo/chat" => (HTML, include_bytes!("../../public/demo/chat.html")),
        "/demo/demo.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../public/demo/demo.css"),
        ),
        "/docs/client.md" => (DOC, include_bytes!("../../docs/client.md")),
        "/docs/protocol.md" => (DOC, include_bytes!("../../docs/protocol.md")),
        "/docs/api.md" => (DOC, include_bytes!("../../docs/api.md")),
        "/docs/users.md" => (DOC, include_bytes!("../../docs/users.md")),
        "/docs/operations.md" => (DOC, include_bytes!("../../docs/operations.md")),
        _ => return None,
    })
}

/// `public/index.html` with this build's version filled in, made once.
fn landing_page() -> &'static [u8] {
    static PAGE: OnceLock<Vec<u8>> = OnceLock::new();
    PAGE.get_or_init(|| {
        include_str!("../../public/index.html")
            .replace("{{version}}", env!("CARGO_PKG_VERSION"))
            .into_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn landing_page_names_the_version_and_links_what_it_lists() {
        let (_, page) = lookup("/").expect("/ is served");
        let page = std::str::from_utf8(page).expect("utf-8");
        assert!(page.contains(concat!("syncd ", env!("CARGO_PKG_VERSION"))));
        assert!(!page.contains("{{"), "every placeholder is filled");
        for link in page.split("href=\"").skip(1) {
            let target = &link[..link.find('"').expect("closed quote")];
            let served = lookup(target).is_some() || target == "/healthz";
            assert!(
                served,
                "the landing page links to {target}, which is not served"
            );
        }
    }
}
