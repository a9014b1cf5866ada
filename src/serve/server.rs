//! The server: its shared state ([`App`]), the routes, the checks every
//! request passes before a handler sees it (the `Host` of a loopback
//! server, the access token, the action token on every POST), the headers
//! every answer carries (a content security policy that allows no inline
//! script and no other origin), and the start: bind, print the address
//! and the action token, serve until Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use spoolflow::layout::Root;

use super::{actions, api, pages, safety, sse, task_page, Config, Refusal};

/// What every handler shares.
pub struct App {
    pub root: Root,
    pub allow_actions: bool,
    /// `--token`: every request must carry it.
    pub access: Option<String>,
    /// The per-start token every action must carry.
    pub action_token: String,
    /// The address listened on (its port, for the `Host` check).
    pub addr: SocketAddr,
    pub live: Arc<sse::Live>,
    /// The records' summaries, kept while `done/` and `failed/` do not change.
    pub records: super::data::RecordsCache,
}

/// The largest request body (an action's form).
const BODY_LIMIT: usize = 16 * 1024;

/// Serves the dashboard until interrupted.
pub fn run(root: Root, config: Config) -> Result<(), String> {
    safety::check_listen(&config.listen, config.token.as_deref())?;
    let action_token = safety::random_token().map_err(|e| format!("cannot make a token: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let live = sse::Live::start(&root)?;
        let app = Arc::new(App {
            root,
            allow_actions: config.allow_actions,
            access: config.token,
            action_token,
            addr,
            live,
            records: Default::default(),
        });
        announce(&app);
        // The records' summaries are read while the first page is awaited.
        let warm = app.clone();
        tokio::task::spawn_blocking(move || warm.records.warm(&warm.root, &warm.live));
        // Ctrl-C ends at once: a graceful end would wait for every live
        // stream (they never end by themselves).
        tokio::select! {
            r = axum::serve(listener, router(app)) => r.map_err(|e| format!("the server stopped: {e}")),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// Tells the operator where the dashboard is (tests read this line).
fn announce(app: &App) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "spoolflow serve: listening on http://{}/", app.addr);
    if app.access.is_some() {
        let _ = writeln!(
            out,
            "every request must carry the token: open http://{}/?token=… once, or send Authorization: Bearer …",
            app.addr
        );
    }
    if app.allow_actions {
        let _ = writeln!(out, "actions allowed; action token: {}", app.action_token);
    } else {
        let _ = writeln!(
            out,
            "read-only (--allow-actions enables cancel, retry and priority)"
        );
    }
    let _ = out.flush();
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{id}", get(task_page::task))
        .route("/tasks/{id}/raw", get(api::raw))
        .route("/rejected", get(pages::rejected))
        .route("/events", get(sse::events))
        .route("/assets/app.js", get(pages::script))
        .route("/assets/style.css", get(pages::style))
        .route("/api/status", get(api::status))
        .route("/api/overview", get(api::overview))
        .route("/api/tasks", get(api::tasks))
        .route("/api/tasks/{id}", get(api::task))
        .route("/api/tasks/{id}/flow", get(api::flow))
        .route("/api/tasks/{id}/logs", get(api::logs))
        .route("/api/rejected", get(api::rejected))
        .route("/api/tasks/{id}/cancel", post(actions::cancel))
        .route("/api/tasks/{id}/retry", post(actions::retry))
        .route("/api/tasks/{id}/priority", post(actions::priority))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

async fn not_found(req: Request) -> Refusal {
    let r = Refusal::new(StatusCode::NOT_FOUND, "no such page");
    if req.uri().path().starts_with("/api/") {
        r.into_json()
    } else {
        r
    }
}

/// The checks before any handler, and the headers after.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let refuse = |status, message: &str| {
        let r = Refusal::new(status, message);
        (if api { r.into_json() } else { r }).into_response()
    };
    let headers = req.headers();
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if safety::is_loopback(&app.addr) && !safety::host_allowed(text(header::HOST), app.addr.port())
    {
        return with_headers(refuse(
            StatusCode::FORBIDDEN,
            "this dashboard answers requests to its loopback address only",
        ));
    }
    if let Some(want) = &app.access {
        let given = safety::presented_token(
            text(header::AUTHORIZATION),
            text(header::COOKIE),
            req.uri().query(),
        );
        match given {
            Some((t, true)) if safety::same_secret(&t, want) && req.method() == Method::GET => {
                // Kept in a cookie, and taken out of the address bar (and
                // the browser's history).
                let cookie = format!(
                    "{}={t}; HttpOnly; SameSite=Strict; Path=/",
                    safety::TOKEN_COOKIE
                );
                let to = safety::without_token(req.uri().path(), req.uri().query());
                let mut resp = axum::response::Redirect::to(&to).into_response();
                if let Ok(c) = HeaderValue::from_str(&cookie) {
                    resp.headers_mut().insert(header::SET_COOKIE, c);
                }
                return with_headers(resp);
            }
            Some((t, _)) if safety::same_secret(&t, want) => {}
            _ => return with_headers(refuse(
                StatusCode::UNAUTHORIZED,
                "this dashboard needs its access token (?token=… once, or Authorization: Bearer …)",
            )),
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if let Err(r) = actions::admit(&app, req.headers()) {
            return with_headers(r.into_json().into_response());
        }
    }
    with_headers(next.run(req).await)
}

/// The headers every answer carries.
fn with_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    resp
}
