//! The report page: `sketchd serve --http-listen ADDR` serves a small web
//! page where a reader picks a namespace, the windows, a cut-off and
//! countries, and sees the report and the charts; and the JSON (and SVG)
//! the page is drawn from:
//!
//! | path | answer |
//! |---|---|
//! | `/` | the page (HTML, script and style built into the binary; no other host is contacted) |
//! | `/api/namespaces` | the namespaces the caller may read, with their first and end day |
//! | `/api/report?namespace&a_from&a_to&b_from&b_to[&cutoff&countries&sort&top&names]` | the report, as `sketchd report --json` prints it |
//! | `/api/chart?…[&step&index]` | the chart's series (JSON) |
//! | `/api/chart.svg?…` | the chart, as `sketchd report --chart` draws it |
//!
//! Days take the CLI's forms (YYYY-MM-DD, RFC 3339, `today`, `-30d`).
//! Answers come from `report::build` over this process's engine
//! (`report::Local`), which calls the same `query` functions as the gRPC
//! service. Access is the gRPC rule: with tokens configured, every `/api/`
//! request needs `Authorization: Bearer <token>` of a token with the reader
//! role on the namespace (401 without one, 403 without the role); the page
//! takes the token from the address's fragment (`#token=…`, which browsers
//! never send) or asks for it, and keeps it in the tab's session storage.
//!
//! The server holds the engine weakly, like the metrics endpoint, so that
//! it never delays shutdown.

pub mod http;

use std::sync::{Arc, Weak};

use tokio::net::TcpListener;

use crate::auth::{Authenticate, Caller, Role, TokenTable};
use crate::engine::Engine;
use crate::error::Error;
use crate::ingest::parse_country;
use crate::report::{self, chart, dates, Local, ReportError, ReportSpec, Sort};
use crate::time::DayWindow;
use http::{Request, Response};

const PAGE: &str = include_str!("page.html");

/// Serves the page and its API on `listener` for as long as `engine` lives.
pub async fn serve(listener: TcpListener, engine: Weak<Engine>, tokens: TokenTable) {
    let auth = Authenticate::new(tokens);
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        if engine.strong_count() == 0 {
            return;
        }
        let (engine, auth) = (engine.clone(), auth.clone());
        tokio::spawn(async move {
            let (response, head_only) = match http::read_request(&mut conn).await {
                Ok(None) => return,
                Err(response) => (response, false),
                Ok(Some(request)) => {
                    let head_only = request.method == "HEAD";
                    (answer(&request, &engine, &auth).await, head_only)
                }
            };
            http::write_response(&mut conn, &response, head_only).await;
        });
    }
}

async fn answer(request: &Request, engine: &Weak<Engine>, auth: &Authenticate) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        return Response::error(405, "only GET is served here");
    }
    match request.path.as_str() {
        "/" | "/index.html" => return Response::new(200, "text/html; charset=utf-8", PAGE),
        "/api/namespaces" | "/api/report" | "/api/chart" | "/api/chart.svg" => {}
        _ => return Response::error(404, "not found; the page is at /"),
    }
    let caller = match auth.caller_for(request.authorization.as_deref()) {
        Ok(caller) => caller,
        Err(why) => return Response::error(401, &why.replace("metadata", "header")),
    };
    let Some(engine) = engine.upgrade() else {
        return Response::error(503, "the server is shutting down");
    };
    let result = match request.path.as_str() {
        "/api/namespaces" => namespaces(&engine, &caller),
        path => match readable(request, &caller) {
            Err(response) => return response,
            Ok(namespace) => api(path, request, namespace, Local(engine)).await,
        },
    };
    result.unwrap_or_else(error_response)
}

/// The namespace asked, if the caller may read it.
fn readable(request: &Request, caller: &Caller) -> Result<String, Response> {
    let Some(ns) = request.param("namespace").filter(|n| !n.is_empty()) else {
        return Err(Response::error(400, "missing query parameter namespace"));
    };
    if !caller.may(Role::Reader, ns) {
        tracing::warn!(
            caller = caller.name(),
            namespace = ns,
            "page: permission denied"
        );
        return Err(Response::error(
            403,
            &format!(
                "{:?} may not read namespace {} (needs role reader)",
                caller.name(),
                crate::error::quoted(ns)
            ),
        ));
    }
    Ok(ns.to_owned())
}

async fn api(
    path: &str,
    request: &Request,
    namespace: String,
    local: Local,
) -> Result<Response, ReportError> {
    let spec = report_spec(request, namespace)?;
    if path == "/api/report" {
        let report = report::build(&local, &spec).await?;
        return Ok(json(report::json::render(&report)));
    }
    let chart = chart::ChartSpec {
        namespace: spec.namespace.clone(),
        span: DayWindow::new(spec.a.from, spec.b.to.max(spec.a.to))?,
        step: request.param("step").unwrap_or("week").to_owned(),
        countries: spec.countries.clone(),
        top: match request.param("top") {
            Some(t) => number("top", t)?,
            None => 4,
        },
        index: flag(request, "index"),
        cutoff: spec.cutoff,
        a: Some(spec.a),
        b: Some(spec.b),
    };
    let data = chart::fetch(&local, &chart).await?;
    Ok(if path == "/api/chart.svg" {
        Response::new(200, "image/svg+xml", chart::svg(&data))
    } else {
        json(chart::json(&data))
    })
}

fn json(value: serde_json::Value) -> Response {
    Response::new(200, "application/json", value.to_string())
}

fn flag(request: &Request, name: &str) -> bool {
    matches!(request.param(name), Some("1" | "true" | "on" | "yes"))
}

fn number(field: &str, text: &str) -> Result<usize, Error> {
    text.parse()
        .map_err(|_| Error::invalid(field, format!("{text:?} is not a whole number")))
}

/// The report's spec from the query parameters.
fn report_spec(request: &Request, namespace: String) -> Result<ReportSpec, Error> {
    let today = dates::today();
    let get = |name: &str| {
        request
            .param(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::invalid(name, "missing query parameter"))
    };
    let a = dates::parse_window("a_from", get("a_from")?, "a_to", get("a_to")?, today)?;
    let b = dates::parse_window("b_from", get("b_from")?, "b_to", get("b_to")?, today)?;
    let cutoff = match request.param("cutoff").filter(|c| !c.is_empty()) {
        Some(c) => Some(dates::parse_day("cutoff", c, today)?),
        None => None,
    };
    let countries = request
        .param("countries")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| parse_country(c).map_err(|reason| Error::invalid("countries", reason)))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = ReportSpec {
        namespace,
        a,
        b,
        cutoff,
        countries,
        top: match request.param("top") {
            Some(t) if !t.is_empty() => number("top", t)?,
            _ => 10,
        },
        sort: Sort::parse("sort", request.param("sort").unwrap_or("a"))?,
        names: flag(request, "names"),
    };
    spec.validate()?;
    Ok(spec)
}

/// The namespaces the caller may read, with the days that hold data.
fn namespaces(engine: &Arc<Engine>, caller: &Caller) -> Result<Response, ReportError> {
    engine.check_readable()?;
    let mut list = Vec::new();
    for ns in engine.catalog().list() {
        if !caller.may(Role::Reader, &ns.name) {
            continue;
        }
        let extent = crate::query::extent(engine, &ns)?;
        list.push(serde_json::json!({
            "name": ns.name,
            "first_day": extent.map(|w| w.from.to_string()),
            "end_day": extent.map(|w| w.to.to_string()),
        }));
    }
    Ok(json(serde_json::json!({ "namespaces": list })))
}

/// A refused question as an HTTP answer: the status code of its gRPC
/// counterpart and the same sentence.
fn error_response(e: ReportError) -> Response {
    let status = match &e {
        ReportError::Query(err) => match err {
            Error::InvalidArgument { .. } | Error::InvalidRow { .. } => 400,
            Error::NamespaceNotFound(_) | Error::UnknownInScope { .. } => 404,
            Error::Unavailable(_) => 503,
            _ => 500,
        },
        ReportError::Client(_) | ReportError::Task(_) => 500,
    };
    Response::error(status, &e.to_string())
}
