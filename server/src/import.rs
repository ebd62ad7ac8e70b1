//! `meshtrace import`: loads trace files (OTLP JSON, Zipkin v2 JSON, Jaeger JSON, Nezha CSV)
//! into a running server over OTLP HTTP, or straight into a data directory through the same
//! write-ahead log and store that `serve` uses.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use meshtrace_collector::decode::{jaeger_json, nezha, otlp, otlp_json, zipkin};
use meshtrace_collector::{Batch, Limits, SpanSink};
use meshtrace_model::Span;
use prost::Message;

use crate::config::{Config, ServeArgs};
use crate::pipeline::Pipeline;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    OtlpJson,
    Zipkin,
    JaegerJson,
    NezhaCsv,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Format of the files
    #[arg(long, value_enum)]
    pub format: Format,
    /// Files to import
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Send to a running server's OTLP HTTP endpoint, e.g. http://127.0.0.1:4318
    #[arg(long, conflicts_with = "data_dir")]
    pub to: Option<String>,
    /// Write straight into this data directory (no server may be running on it)
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Spans per request or per write
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

fn decode(format: Format, path: &PathBuf, limits: &Limits) -> anyhow::Result<Batch> {
    let read = || std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let batch = match format {
        Format::OtlpJson => otlp_json::decode(&read()?, limits)?,
        Format::Zipkin => zipkin::decode(&read()?, limits)?,
        Format::JaegerJson => jaeger_json::decode(&read()?, limits)?,
        Format::NezhaCsv => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            nezha::decode(std::io::BufReader::new(file), limits)?
        }
    };
    Ok(batch)
}

enum Target {
    Http {
        client: reqwest::Client,
        url: String,
    },
    Local {
        pipeline: Pipeline,
        running: Box<crate::serve::Opened>,
    },
}

impl Target {
    async fn send(&self, spans: Vec<Span>) -> anyhow::Result<()> {
        match self {
            Target::Http { client, url } => send_http(client, url, &spans).await,
            Target::Local { pipeline, .. } => Ok(pipeline.accept(spans).await?),
        }
    }
}

async fn send_http(client: &reqwest::Client, url: &str, spans: &[Span]) -> anyhow::Result<()> {
    let body = otlp::to_request(spans).encode_to_vec();
    for _ in 0..20 {
        let resp = client
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await
            .with_context(|| format!("sending to {url}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        if status.as_u16() == 429 || status.as_u16() == 503 {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        let text = resp.text().await.unwrap_or_default();
        bail!("{url} answered {status}: {text}");
    }
    bail!("{url} stayed overloaded; gave up")
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let limits = Limits::for_files();
    let target = match (&args.to, &args.data_dir) {
        (Some(to), _) => Target::Http {
            client: reqwest::Client::new(),
            url: format!("{}/v1/traces", to.trim_end_matches('/')),
        },
        (None, Some(dir)) => {
            let config = Config::load(&ServeArgs {
                data_dir: Some(dir.clone()),
                ..Default::default()
            })?;
            let opened =
                crate::serve::open(&config, &meshtrace_model::memory::MemoryBudget::unlimited())
                    .await?;
            let pipeline = opened.pipeline()?;
            Target::Local {
                pipeline,
                running: Box::new(opened),
            }
        }
        (None, None) => bail!("say where to import: --to http://HOST:4318 or --data-dir DIR"),
    };
    let bar = ProgressBar::new(args.files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} files {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut imported, mut rejected) = (0usize, 0usize);
    for path in &args.files {
        let batch = decode(args.format, path, &limits)?;
        rejected += batch.rejected.len();
        for r in batch.rejected.iter().take(3) {
            tracing::warn!(file = %path.display(), problem = %r.message, "span rejected");
        }
        for chunk in batch.spans.chunks(args.batch.max(1)) {
            target.send(chunk.to_vec()).await?;
            imported += chunk.len();
            bar.set_message(format!("{imported} spans"));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Target::Local { running, .. } = target {
        running.close().await?;
    }
    println!(
        "imported {imported} spans ({rejected} rejected) from {} files",
        args.files.len()
    );
    Ok(())
}
