//! The API reference at `/docs`: Swagger UI drawing the `/openapi.json`
//! served beside it, from files compiled into the binary (vendored, unchanged,
//! from the npm package `swagger-ui-dist` in `assets/swagger-ui-dist/`), so
//! the page needs nothing but this API: no CDN, no network at build time.
//!
//! The page's Content-Security-Policy lets it load scripts, styles, fonts
//! and data from this origin only (images also as `data:` URIs, which the
//! stylesheet uses for its icons), run no inline script, and be framed by
//! nobody. The vendored files' URLs carry Swagger UI's version, so a
//! browser keeps them for a year and an upgrade changes their URLs; the
//! page and its start-up script are revalidated on every load.
//!
//! The URLs in the page are relative (`docs/...`, `openapi.json`), so the
//! reference also works behind a proxy that mounts the API under a prefix.

use axum::{
    Router,
    http::{HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// The vendored Swagger UI's version, in one place for the asset URLs.
macro_rules! swagger_ui_version {
    () => {
        "5.35.0"
    };
}

/// The version of `swagger-ui-dist` in `assets/swagger-ui-dist/`.
pub const SWAGGER_UI_VERSION: &str = swagger_ui_version!();

/// Where the page is.
pub const PAGE: &str = "/docs";

/// The start-up script, claim-api's own.
const INIT_PATH: &str = "/docs/init.js";
const INIT: &str = include_str!("../assets/docs/init.js");

/// The vendored bundle and stylesheet, under a versioned path.
const BUNDLE_PATH: &str = concat!("/docs/swagger-ui-", swagger_ui_version!(), "/swagger-ui-bundle.js");
const BUNDLE: &[u8] = include_bytes!("../assets/swagger-ui-dist/swagger-ui-bundle.js");
const STYLESHEET_PATH: &str = concat!("/docs/swagger-ui-", swagger_ui_version!(), "/swagger-ui.css");
const STYLESHEET: &[u8] = include_bytes!("../assets/swagger-ui-dist/swagger-ui.css");

/// The page: the stylesheet, an element to draw in, the bundle, then the
/// start-up script. Relative to `/docs`, `docs/x` is `/docs/x`.
const HTML: &str = concat!(
    "<!doctype html>\n",
    "<html lang=\"en\">\n",
    "<head>\n",
    "<meta charset=\"utf-8\">\n",
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    "<title>Turnstile claim API reference</title>\n",
    "<link rel=\"stylesheet\" href=\"docs/swagger-ui-",
    swagger_ui_version!(),
    "/swagger-ui.css\">\n",
    "</head>\n",
    "<body>\n",
    "<div id=\"swagger-ui\"></div>\n",
    "<script src=\"docs/swagger-ui-",
    swagger_ui_version!(),
    "/swagger-ui-bundle.js\"></script>\n",
    "<script src=\"docs/init.js\"></script>\n",
    "</body>\n",
    "</html>\n",
);

/// What the page may load, run and connect to: this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// How long a browser keeps a vendored file: a year, unchanged.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// The page and start-up script: asked for again on every load.
const REVALIDATE: &str = "no-cache";

fn answer(content_type: &'static str, cache: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    let mut response = answer("text/html; charset=utf-8", REVALIDATE, HTML.as_bytes());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    response
}

/// `/docs` and its files, open to anyone, as `/openapi.json` is.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PAGE, get(page))
        .route(
            INIT_PATH,
            get(|| async { answer("text/javascript; charset=utf-8", REVALIDATE, INIT.as_bytes()) }),
        )
        .route(
            BUNDLE_PATH,
            get(|| async { answer("text/javascript; charset=utf-8", IMMUTABLE, BUNDLE) }),
        )
        .route(
            STYLESHEET_PATH,
            get(|| async { answer("text/css; charset=utf-8", IMMUTABLE, STYLESHEET) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_in_the_code_is_the_vendored_one() {
        let package: serde_json::Value =
            serde_json::from_str(include_str!("../assets/swagger-ui-dist/package.json")).unwrap();
        assert_eq!(package["name"], "swagger-ui-dist");
        assert_eq!(package["version"], SWAGGER_UI_VERSION);
        let readme = include_str!("../assets/swagger-ui-dist/README.md");
        assert!(
            readme.starts_with(&format!("# swagger-ui-dist {SWAGGER_UI_VERSION}\n")),
            "assets/swagger-ui-dist/README.md names another version"
        );
        assert!(readme.contains(&format!("swagger-ui-dist@{SWAGGER_UI_VERSION}")));
    }

    #[test]
    fn the_page_loads_what_is_served_and_no_inline_script() {
        for path in [STYLESHEET_PATH, BUNDLE_PATH, INIT_PATH] {
            let relative = path.trim_start_matches('/');
            assert!(
                HTML.contains(&format!("\"{relative}\"")),
                "the page does not load {path}"
            );
        }
        assert_eq!(HTML.matches("<script").count(), 2);
        assert_eq!(HTML.matches("<script src=").count(), 2, "an inline script");
        assert!(!HTML.contains("style="), "an inline style");
    }
}
