//! Where a report's answers come from: a server over gRPC ([`Client`]) or
//! the engine of this process ([`Local`], for the web page). Both ask the
//! same `query` functions, so a report reads the same either way.

use std::future::Future;
use std::sync::Arc;

use crate::client::Client;
use crate::engine::Engine;
use crate::query::{
    self, CompareRow, CountAnswer, GroupBy, GroupRow, GroupSpec, Metric, Retention, Scope, Step,
    DEFAULT_CONFIDENCE,
};
use crate::sketch::Estimate;
use crate::time::DayWindow;

use super::ReportError;

type Answer<T> = Result<T, ReportError>;

/// The questions a report asks.
pub trait Source: Sync {
    fn count(
        &self,
        ns: &str,
        metric: Metric,
        scope: &Scope,
        window: DayWindow,
    ) -> impl Future<Output = Answer<CountAnswer>> + Send;

    /// Every group, largest in A first.
    fn compare(
        &self,
        ns: &str,
        metric: Metric,
        by: GroupBy,
        within: &Scope,
        a: DayWindow,
        b: DayWindow,
    ) -> impl Future<Output = Answer<Vec<CompareRow>>> + Send;

    /// Every group, largest first.
    fn group(
        &self,
        ns: &str,
        metric: Metric,
        by: GroupBy,
        within: &Scope,
        window: DayWindow,
    ) -> impl Future<Output = Answer<Vec<GroupRow>>> + Send;

    fn retention(
        &self,
        ns: &str,
        scope: &Scope,
        a: DayWindow,
        b: DayWindow,
    ) -> impl Future<Output = Answer<Retention>> + Send;

    /// `step`: `day`, `week`, `month` or `Nd`.
    fn series(
        &self,
        ns: &str,
        metric: Metric,
        scope: &Scope,
        window: DayWindow,
        step: &str,
    ) -> impl Future<Output = Answer<Vec<(DayWindow, Estimate)>>> + Send;
}

impl Source for Client {
    async fn count(
        &self,
        ns: &str,
        metric: Metric,
        scope: &Scope,
        window: DayWindow,
    ) -> Answer<CountAnswer> {
        let r = Client::count(self, ns, metric, scope, window).await?;
        Ok(CountAnswer {
            estimate: r.estimate,
            covered: r.covered,
        })
    }

    async fn compare(
        &self,
        ns: &str,
        metric: Metric,
        by: GroupBy,
        within: &Scope,
        a: DayWindow,
        b: DayWindow,
    ) -> Answer<Vec<CompareRow>> {
        Ok(Client::compare(self, ns, metric, by, within, a, b, 0).await?)
    }

    async fn group(
        &self,
        ns: &str,
        metric: Metric,
        by: GroupBy,
        within: &Scope,
        window: DayWindow,
    ) -> Answer<Vec<GroupRow>> {
        Ok(Client::group(self, ns, metric, by, within, window, 0).await?)
    }

    async fn retention(
        &self,
        ns: &str,
        scope: &Scope,
        a: DayWindow,
        b: DayWindow,
    ) -> Answer<Retention> {
        Ok(Client::retention(self, ns, scope, a, b).await?)
    }

    async fn series(
        &self,
        ns: &str,
        metric: Metric,
        scope: &Scope,
        window: DayWindow,
        step: &str,
    ) -> Answer<Vec<(DayWindow, Estimate)>> {
        Ok(Client::series(self, ns, metric, scope, window, step).await?)
    }
}

/// The engine of this process, asked on the blocking pool (sled reads).
/// A cluster node too far behind its log refuses, as its gRPC reads do.
#[derive(Clone)]
pub struct Local(pub Arc<Engine>);

impl Local {
    async fn run<T, F>(&self, f: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> crate::error::Result<T> + Send + 'static,
    {
        let engine = self.0.clone();
        engine.check_readable()?;
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| ReportError::Task(e.to_string()))?
            .map_err(ReportError::from)
    }
}

fn spec(metric: Metric, by: GroupBy, within: &Scope) -> GroupSpec {
    GroupSpec {
        metric,
        by,
        within: within.clone(),
        confidence: DEFAULT_CONFIDENCE,
        limit: 0,
    }
}

impl Source for Local {
    async fn count(
        &self,
        ns: &str,
        metric: Metric,
        scope: &Scope,
        window: DayWindow,
    ) -> Answer<CountAnswer> {
        let (ns, scope) = (ns.to_owned(), scope.clone());
        self.run(move |e| query::count(e, &ns, metric, &scope, window, DEFAULT_CONFIDENCE))
            .await
    }

    async fn compare(
        &self,
        ns: &str,
        metric: Metric,
        by: GroupBy,
        within: &Scope,
        a: DayWindow,
        b: DayWindow,
    ) -> Answer<Vec<CompareRow>> {
        let (ns, spec) = (ns.to_owned(), spec(metric, by, within));
        self.run(move |e| query::compare(e, &ns, &spec, a, b)).await
    }

    async fn group(
        &self,
        ns: &str,
        metric: Metric,
        by: GroupBy,
        within: &Scope,
        window: DayWindow,
    ) -> Answer<Vec<GroupRow>> {
        let (ns, spec) = (ns.to_owned(), spec(metric, by, within));
        self.run(move |e| query::group(e, &ns, &spec, window)).await
    }

    async fn retention(
        &self,
        ns: &str,
        scope: &Scope,
        a: DayWindow,
        b: DayWindow,
    ) -> Answer<Retention> {
        let (ns, scope) = (ns.to_owned(), scope.clone());
        self.run(move |e| query::retention(e, &ns, &scope, a, b))
            .await
    }

    async fn series(
        &self,
        ns: &str,
        metric: Metric,
        scope: &Scope,
        window: DayWindow,
        step: &str,
    ) -> Answer<Vec<(DayWindow, Estimate)>> {
        let step = Step::parse("step", step)?;
        let (ns, scope) = (ns.to_owned(), scope.clone());
        self.run(move |e| query::series(e, &ns, metric, &scope, window, step, DEFAULT_CONFIDENCE))
            .await
    }
}
