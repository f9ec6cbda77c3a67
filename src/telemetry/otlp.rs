//! OTLP trace export over HTTP/protobuf, sent with the reqwest client the server already uses
//! (one TLS stack, aws-lc-rs), from the server's own Tokio runtime.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The span exporter's HTTP client. The SDK's batch processor exports from a thread of its
/// own, outside any Tokio runtime, where reqwest cannot run; each export is therefore handed to
/// the runtime the server runs on, and the batch thread waits for its result.
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = sent.await??;
        Ok(Response::builder().status(status).body(body)?)
    }
}

/// Flushes the spans not yet exported; without an endpoint there is nothing to flush.
#[derive(Debug, Default)]
pub struct Tracing(Option<SdkTracerProvider>);

impl Tracing {
    /// Exports what is still buffered and stops the exporter. The batch thread waits on the
    /// runtime, so this must not block a runtime thread.
    pub async fn shutdown(self) {
        if let Some(provider) = self.0 {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(%error, "traces not flushed at shutdown");
            }
        }
    }
}

/// The tracer exporting to `{endpoint}/v1/traces`, if an endpoint is configured and a Tokio
/// runtime is running; otherwise no traces are exported (and a missing runtime is logged).
pub fn start(endpoint: Option<&str>) -> (Tracing, Option<SdkTracer>) {
    let Some(endpoint) = endpoint else {
        return (Tracing(None), None);
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        eprintln!("tessera: traces are not exported: no async runtime to export from");
        return (Tracing(None), None);
    };
    // Client TLS (an https endpoint) uses the process-wide aws-lc-rs provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .user_agent("tessera")
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("tessera: traces are not exported: {error}");
            return (Tracing(None), None);
        }
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(RuntimeClient { client, runtime })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("tessera: traces are not exported: {error}");
            return (Tracing(None), None);
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("tessera").build())
        .build();
    let tracer = provider.tracer("tessera");
    (Tracing(Some(provider)), Some(tracer))
}
