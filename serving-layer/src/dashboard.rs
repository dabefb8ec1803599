//! The dashboard page at `/`: one self-contained HTML file (no CDN, works offline) compiled
//! into the binary.

pub const INDEX_HTML: &str = include_str!("../assets/index.html");
