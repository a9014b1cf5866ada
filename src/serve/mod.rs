//! `spoolflow serve`: a web dashboard for a root, read from its files like
//! the reading commands (the engine may or may not run; the dashboard is
//! not part of it).
//!
//! - [`server`]: the router, the shared state, the checks every request
//!   passes (host, access token, action token) and the start;
//! - [`safety`]: those checks as pure functions;
//! - [`data`]: what the pages and `/api` read, through the read layer and
//!   the CLI's `--json` builders (same shapes);
//! - [`api`]: `/api/…`, JSON;
//! - [`pages`] and [`task_page`]: the HTML (maud: escaped by default);
//! - [`timeline`]: attempts as bars, the last hour per minute (pure);
//! - [`sse`]: live updates from a filesystem watcher, as Server-Sent Events;
//! - [`actions`]: cancel, retry, priority (only with `--allow-actions`).

mod actions;
mod api;
mod data;
mod engine_watch;
mod pages;
mod safety;
mod server;
mod sse;
mod task_page;
mod timeline;

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub use safety::check_listen as safety_check;
pub use server::run;

/// What `spoolflow serve` was asked for.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub allow_actions: bool,
    /// The access token every request must carry (required off loopback).
    pub token: Option<String>,
}

/// An answer that is not a success: a status and a message for a person,
/// as JSON under `/api`, as a page elsewhere.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    pub json: bool,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl std::fmt::Display) -> Refusal {
        Refusal {
            status,
            message: message.to_string(),
            json: false,
        }
    }

    pub fn bad_request(message: impl std::fmt::Display) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }

    /// The same refusal, answered as JSON.
    pub fn into_json(mut self) -> Refusal {
        self.json = true;
        self
    }

    /// A CLI failure as an HTTP status: an unknown id is 404, bad input 400.
    pub fn from_cli(f: crate::cli::Failure) -> Refusal {
        let status = match f.code {
            crate::cli::exit::NOT_FOUND => StatusCode::NOT_FOUND,
            crate::cli::exit::USAGE => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal::new(status, f.message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if self.json {
            let body = serde_json::json!({ "error": self.message });
            return (self.status, axum::Json(body)).into_response();
        }
        let title = self.status.canonical_reason().unwrap_or("error");
        let page = pages::layout(
            title,
            "",
            maud::html! {
                h1 { (self.status.as_u16()) " " (title) }
                p.refusal { (self.message) }
                p { a href="/" { "back to the overview" } }
            },
        );
        (self.status, page).into_response()
    }
}
