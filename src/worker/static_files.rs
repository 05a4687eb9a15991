//! The browser client and the demos, compiled into the binary so any syncd
//! serves them: `/syncd.js`, `/syncd.d.ts` and `/demo/…`.

/// The content type and bytes of a static path, if it is one.
pub fn lookup(path: &str) -> Option<(&'static str, &'static [u8])> {
    const JS: &str = "text/javascript; charset=utf-8";
    const HTML: &str = "text/html; charset=utf-8";
    Some(match path {
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
        _ => return None,
    })
}
