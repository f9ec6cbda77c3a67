//! The one owner of the node's background jobs. Each job has a name and runs on its own task,
//! either on an interval (the first run at once) or whenever a signal arrives. A run that
//! fails or panics is logged and the job runs again at its next tick; no job can stop
//! another. Every task is stopped together at shutdown.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// Why one run of a job did not do its work.
#[derive(Debug)]
pub struct JobError {
    message: String,
    /// Logged as an error rather than a warning: something that must not go unnoticed, such
    /// as a change that was made but not audited.
    severe: bool,
}

impl JobError {
    /// `what` says what did not happen ("client usage not recorded"), `cause` why.
    pub fn new(what: &str, cause: impl std::fmt::Display) -> Self {
        Self {
            message: format!("{what}: {cause}"),
            severe: false,
        }
    }

    /// A failure logged as an error.
    pub fn severe(what: &str, cause: impl std::fmt::Display) -> Self {
        Self {
            severe: true,
            ..Self::new(what, cause)
        }
    }

    /// The outcome of a run made of independent steps: failed if any step failed.
    pub fn all(failures: Vec<Self>) -> Result<(), Self> {
        if failures.is_empty() {
            return Ok(());
        }
        Err(Self {
            severe: failures.iter().any(|failure| failure.severe),
            message: failures
                .into_iter()
                .map(|failure| failure.message)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Default)]
pub struct Scheduler {
    tasks: JoinSet<()>,
}

impl Scheduler {
    /// Runs `job` now and then every `interval` after the previous run started; a run that
    /// overruns delays the next one rather than causing a burst of catch-up runs.
    pub fn every<F, Fut>(&mut self, name: &'static str, interval: Duration, mut job: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        // A zero period would make the timer panic; settings never ask for one.
        let period = interval.max(Duration::from_millis(1));
        self.tasks.spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                run(name, &mut job).await;
            }
        });
    }

    /// Like [`Self::every`], and also at once whenever `wake` is notified.
    pub fn every_or_when<F, Fut>(
        &mut self,
        name: &'static str,
        interval: Duration,
        wake: Arc<Notify>,
        mut job: F,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let period = interval.max(Duration::from_millis(1));
        self.tasks.spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = wake.notified() => {}
                }
                run(name, &mut job).await;
            }
        });
    }

    /// Keeps `task` running for the life of the node: a listener rather than a periodic job,
    /// stopped with the others.
    pub fn keep(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Runs `job` each time `signal` arrives.
    pub fn on_signal<F, Fut>(
        &mut self,
        name: &'static str,
        mut signal: tokio::signal::unix::Signal,
        mut job: F,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.tasks.spawn(async move {
            while signal.recv().await.is_some() {
                run(name, &mut job).await;
            }
        });
    }

    /// Stops every job, waiting until none is running any more.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// One run of the job, with a panic anywhere in it (starting it included) caught and logged.
async fn run<F, Fut>(name: &'static str, job: &mut F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), JobError>>,
{
    match AssertUnwindSafe(async { job().await }).catch_unwind().await {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.severe => {
            tracing::error!(job = name, %error, "background job failed")
        }
        Ok(Err(error)) => tracing::warn!(job = name, %error, "background job failed"),
        Err(_) => tracing::warn!(job = name, "background job panicked"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_failing_or_panicking_job_stops_neither_itself_nor_the_others() {
        let steady = Arc::new(AtomicU32::new(0));
        let failing = Arc::new(AtomicU32::new(0));
        let panicking = Arc::new(AtomicU32::new(0));
        let mut scheduler = Scheduler::default();
        let counter = steady.clone();
        scheduler.every("steady", Duration::from_millis(10), move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
        let counter = failing.clone();
        scheduler.every("failing", Duration::from_millis(10), move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err(JobError::new("nothing done", "on purpose")) }
        });
        let counter = panicking.clone();
        scheduler.every("panicking", Duration::from_millis(10), move || {
            let runs = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if runs < u32::MAX {
                    panic!("on purpose");
                }
                Ok(())
            }
        });
        let all = [&steady, &failing, &panicking];
        let every_job_ran_thrice = async {
            while all.iter().any(|runs| runs.load(Ordering::SeqCst) < 3) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), every_job_ran_thrice)
            .await
            .unwrap();
        scheduler.stop().await;
        let stopped: Vec<u32> = all.iter().map(|runs| runs.load(Ordering::SeqCst)).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let later: Vec<u32> = all.iter().map(|runs| runs.load(Ordering::SeqCst)).collect();
        assert_eq!(later, stopped);
    }
}
