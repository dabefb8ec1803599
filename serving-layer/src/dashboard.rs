//! The dashboard page at `/`: one self-contained HTML file (no CDN, works offline) compiled
//! into the binary. When the API answers 401 it asks for an API key, keeps it in the tab's
//! `sessionStorage` and sends it as `Authorization: Bearer` from then on.

pub const INDEX_HTML: &str = include_str!("../assets/index.html");
