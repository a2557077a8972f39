//! Over 400 lines on purpose: a list of independent scenarios on one endpoint, each readable on
//! its own, with the few helpers they share (the SDK export, OTLP requests, the Status decoder).
//!
//! `POST /v1/metrics` from the outside (docs/PROTOCOL.md, "OTLP metrics"): a real OpenTelemetry
//! SDK with its OTLP/HTTP exporter (protobuf, gzip, JSON) exports to one worker and a WebSocket
//! client of another worker receives the mapped values; hand-built OTLP requests for what an SDK
//! never sends (a malformed body, refused points, too many points); the publish credential, scope
//! and rate as for `POST /api/metrics`.

mod harness;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use fanout_memory::MemoryBus;
use harness::auth::{valid_token, SECRET};
use harness::process::WorkerProcess;
use harness::redis::RedisServer;
use harness::{start_worker, Client, InProcess, On, Process};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue as SdkKeyValue;
use opentelemetry_otlp::{Compression, Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use prost::Message;
use serde_json::{json, Value};

const PROTOBUF: &str = "application/x-protobuf";

/// `google.rpc.Status` as googleapis's `status.proto` declares it: how a client reads the body of
/// an OTLP refusal (written here from the .proto, not taken from the server).
#[derive(Clone, PartialEq, Message)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// What a request to `POST /v1/metrics` was answered with.
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn response(&self) -> ExportMetricsServiceResponse {
        assert_eq!(self.content_type, PROTOBUF);
        ExportMetricsServiceResponse::decode(self.body.as_slice())
            .unwrap_or_else(|e| panic!("the answer is not an ExportMetricsServiceResponse: {e}"))
    }

    fn status_message(&self) -> Status {
        assert_eq!(
            self.content_type, PROTOBUF,
            "a refusal in the request's encoding"
        );
        Status::decode(self.body.as_slice())
            .unwrap_or_else(|e| panic!("the refusal is not a google.rpc.Status: {e}"))
    }

    fn json(&self) -> Value {
        assert_eq!(self.content_type, "application/json");
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON: {e}"))
    }
}

async fn post(
    addr: SocketAddr,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/v1/metrics"))
        .header("content-type", content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = harness::within("POST /v1/metrics", request.body(body).send())
        .await
        .unwrap_or_else(|e| panic!("POST /v1/metrics to {addr} failed: {e}"));
    let header = |name: &str| harness::http::header(&response, name);
    let status = response.status().as_u16();
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let body = response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        retry_after,
        body,
    }
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn gauge_point(value: f64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    }
}

/// A request of gauges, `(name, points)`, from a resource with `service.name` = `svc`.
fn gauges(metrics: Vec<(&str, Vec<NumberDataPoint>)>) -> ExportMetricsServiceRequest {
    let metrics = metrics
        .into_iter()
        .map(|(name, data_points)| Metric {
            name: name.to_owned(),
            data: Some(Data::Gauge(Gauge { data_points })),
            ..Metric::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "svc")],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

/// The next `metrics` frame's items, by name.
async fn next_metrics(client: &mut Client) -> HashMap<String, Value> {
    loop {
        let frame = client.next_frame().await;
        if frame["type"] != "metrics" {
            continue;
        }
        return frame["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| (m["name"].as_str().unwrap_or_default().to_owned(), m.clone()))
            .collect();
    }
}

/// How the SDK exports.
struct Exporter {
    endpoint: String,
    protocol: Protocol,
    gzip: bool,
    token: Option<String>,
}

impl Exporter {
    fn to(worker: SocketAddr) -> Self {
        Self {
            endpoint: format!("http://{worker}/v1/metrics"),
            protocol: Protocol::HttpBinary,
            gzip: false,
            token: None,
        }
    }
}

/// With a real SDK MeterProvider: records a counter (3, then 4 more), a gauge (42.5) and a
/// histogram (5, 15, 15, 40 in buckets bounded at 10, 20, 50), and exports them once through the
/// OTLP/HTTP exporter; returns what the flush did. On a thread of its own: the SDK blocks.
async fn export_with_sdk(exporter: Exporter) -> Result<(), String> {
    let run = move || {
        let mut builder = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(exporter.protocol)
            .with_endpoint(exporter.endpoint)
            .with_timeout(Duration::from_secs(5))
            // Delta: the provider's shutdown after the flush exports again, and with nothing new
            // to report the worker publishes nothing, so each export is one frame.
            .with_temporality(Temporality::Delta);
        if exporter.gzip {
            builder = builder.with_compression(Compression::Gzip);
        }
        if let Some(token) = exporter.token {
            builder = builder.with_headers(HashMap::from([(
                "authorization".to_owned(),
                format!("Bearer {token}"),
            )]));
        }
        let otlp = builder.build().map_err(|e| e.to_string())?;
        // Exports only when flushed.
        let reader = PeriodicReader::builder(otlp)
            .with_interval(Duration::from_secs(3600))
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("checkout")
            .with_attribute(SdkKeyValue::new("host.name", "h1"))
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        let meter = provider.meter("fanout-tests");
        let route = [SdkKeyValue::new("route", "/pay")];
        let orders = meter.u64_counter("orders").with_unit("{order}").build();
        orders.add(3, &route);
        orders.add(4, &route);
        let depth = meter.f64_gauge("queue.depth").build();
        depth.record(42.5, &[SdkKeyValue::new("host.name", "h2")]);
        let latency = meter
            .f64_histogram("latency")
            .with_unit("ms")
            .with_boundaries(vec![10.0, 20.0, 50.0])
            .build();
        for value in [5.0, 15.0, 15.0, 40.0] {
            latency.record(value, &route);
        }
        let flushed = provider.force_flush().map_err(|e| e.to_string());
        let _ = provider.shutdown();
        flushed
    };
    harness::within("the SDK's export", tokio::task::spawn_blocking(run))
        .await
        .unwrap_or_else(|e| panic!("the SDK thread panicked: {e}"))
}

/// What the SDK's export must become: every value, unit and label.
fn assert_the_sdk_export(metrics: &HashMap<String, Value>) {
    let value = |name: &str| {
        metrics
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from {metrics:?}"))["value"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    assert_eq!(value("orders"), 7.0);
    assert_eq!(value("queue.depth"), 42.5);
    assert_eq!(value("latency.count"), 4.0);
    assert_eq!(value("latency.sum"), 75.0);
    // Rank 2 of 4 is half-way through (10, 20]; p90 is 60% into (20, 50]; p99 would be 48.8,
    // kept within the recorded max, 40.
    assert_eq!(value("latency.p50"), 15.0);
    assert_eq!(value("latency.p90"), 38.0);
    assert_eq!(value("latency.p99"), 40.0);
    let orders = &metrics["orders"];
    assert_eq!(orders["unit"], "{order}");
    assert_eq!(orders["labels"]["service.name"], "checkout");
    assert_eq!(orders["labels"]["host.name"], "h1");
    assert_eq!(orders["labels"]["route"], "/pay");
    assert!(orders["timestamp"]
        .as_u64()
        .is_some_and(|t| t > 1_700_000_000_000));
    // The point's attribute wins over the resource's.
    assert_eq!(metrics["queue.depth"]["labels"]["host.name"], "h2");
    assert_eq!(metrics["latency.p50"]["unit"], "ms");
    assert!(metrics["latency.count"].get("unit").is_none());
    assert_eq!(metrics.len(), 7, "{metrics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sdk_export_to_one_worker_reaches_a_client_of_another_over_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a: WorkerProcess = start_worker::<Process>("otlp-a", On::Redis(&url), &[]).await;
    let b = start_worker::<InProcess>("otlp-b", On::Redis(&url), &[]).await;
    let mut client = Client::connect(b.addr()).await;

    export_with_sdk(Exporter::to(a.addr))
        .await
        .unwrap_or_else(|e| panic!("the export failed: {e}"));
    let metrics = next_metrics(&mut client).await;
    // One request, one message.
    assert_the_sdk_export(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_json_exports_arrive_the_same() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("a", On::SharedMemory(&bus), &[]).await;
    let b = start_worker::<InProcess>("b", On::SharedMemory(&bus), &[]).await;
    let mut client = Client::connect(b.addr()).await;
    for (protocol, gzip) in [
        (Protocol::HttpBinary, true),
        (Protocol::HttpJson, false),
        (Protocol::HttpJson, true),
    ] {
        let exporter = Exporter {
            protocol,
            gzip,
            ..Exporter::to(a.addr())
        };
        export_with_sdk(exporter)
            .await
            .unwrap_or_else(|e| panic!("{protocol:?}, gzip {gzip}: {e}"));
        assert_the_sdk_export(&next_metrics(&mut client).await);
    }
    // The answer to OTLP/JSON is OTLP/JSON.
    let body = json!({"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"j","gauge":{"dataPoints":[{"asInt":"5","timeUnixNano":"1764380000000000000"}]}}]}]}]});
    let answer = post(
        a.addr(),
        "application/json",
        &[],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!({}));
    let j = &next_metrics(&mut client).await["j"];
    assert_eq!(
        (j["value"].as_f64(), j["timestamp"].as_u64()),
        (Some(5.0), Some(1_764_380_000_000))
    );
}

/// Found by an outside tester: OTLP/JSON as protobuf's own `MessageToJson` writes it (enums by
/// name, 32-bit integers and doubles as strings) lost every sum and histogram while the answer
/// said all was published. Now such a request is read; and a metric whose data still does not
/// decode is a refused point in `partial_success`, never left out silently.
#[tokio::test]
async fn otlp_json_with_enum_names_and_numbers_as_strings_is_read_and_nothing_is_dropped_silently()
{
    let worker = start_worker::<InProcess>("otlp-j", On::OwnMemory, &[]).await;
    let mut client = Client::connect(worker.addr()).await;
    let body = json!({"resourceMetrics":[{"scopeMetrics":[{"metrics":[
        {"name":"g","gauge":{"dataPoints":[{"asDouble":"2.5","flags":"0"}]}},
        {"name":"s","sum":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE","isMonotonic":true,
            "dataPoints":[{"asInt":"7"}]}},
        {"name":"h","histogram":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_DELTA",
            "dataPoints":[{"count":"2","sum":"3","explicitBounds":["1"],"bucketCounts":["1","1"]}]}},
        {"name":"broken","sum":{"aggregationTemporality":2,"dataPoints":[{"asInt":"1","timeUnixNano":"abc"}]}},
        // From a second outside tester: one bad point never costs the others of its metric.
        {"name":"hn","histogram":{"aggregationTemporality":2,"dataPoints":[
            {"count":"1","sum":2,"explicitBounds":[10],"bucketCounts":["1","0"]},
            {"count":"1","sum":"NaN","explicitBounds":[10],"bucketCounts":["1","0"]}]}},
        {"name":"hm","histogram":{"aggregationTemporality":2,"dataPoints":[
            {"count":"1","sum":2,"min":"-Infinity","max":"Infinity","explicitBounds":[10],"bucketCounts":["1","0"]}]}},
        {"name":"e","unit":null,"gauge":{"dataPoints":[{"asDouble":1,"exemplars":[{"asDouble":1,"traceId":"AAECAwQFBgcICQoLDA0ODw==","spanId":"AAECAwQFBgc="}]}]}},
        {"name":"snake","gauge":{"data_points":[{"as_double":4}]}},
        {"name":"s2","sum":{"aggregationTemporality":"2","dataPoints":[{"asInt":"3"}]}},
        {"name":"i","gauge":{"dataPoints":[{"asInt":5.0}]}}
    ]}]}]});
    let answer = post(
        worker.addr(),
        "application/json",
        &[],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let partial = &answer.json()["partialSuccess"];
    assert_eq!(partial["rejectedDataPoints"], 2, "{partial}");
    assert!(
        partial["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("metrics[3].sum.dataPoints[0] (broken)")
                && m.contains("metrics[4].histogram.dataPoints[1] (hn)")),
        "{partial}"
    );
    let metrics = next_metrics(&mut client).await;
    let mut names: Vec<&str> = metrics.keys().map(String::as_str).collect();
    names.sort_unstable();
    let histogram =
        |name: &str| ["count", "p50", "p90", "p99", "sum"].map(|part| format!("{name}.{part}"));
    let mut expected: Vec<String> = ["e", "g", "i", "s", "s2", "snake"]
        .map(String::from)
        .to_vec();
    expected.extend(histogram("h"));
    expected.extend(histogram("hm"));
    expected.extend(histogram("hn"));
    expected.sort_unstable();
    assert_eq!(names, expected);
    assert_eq!(metrics["g"]["value"], 2.5);
    assert_eq!(metrics["i"]["value"], 5.0);
    assert_eq!(metrics["snake"]["value"], 4.0);
    assert_eq!(metrics["hn.sum"]["value"], 2.0);
    assert_eq!(metrics["s"]["value"], 7.0);
    assert_eq!(metrics["h.sum"]["value"], 3.0);
}

#[tokio::test]
async fn malformed_bodies_are_400_with_a_status_in_the_request_encoding_and_publish_nothing() {
    let worker = start_worker::<InProcess>("w", On::OwnMemory, &[]).await;
    let mut client = Client::connect(worker.addr()).await;
    let addr = worker.addr();

    // Field 1 declared as a message of 100 bytes, with 3 present.
    let answer = post(addr, PROTOBUF, &[], vec![0x0a, 100, 1, 2, 3]).await;
    assert_eq!(answer.status, 400);
    let status = answer.status_message();
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");
    assert!(
        status
            .message
            .contains("not an ExportMetricsServiceRequest"),
        "{}",
        status.message
    );

    let answer = post(
        addr,
        PROTOBUF,
        &[("content-encoding", "gzip")],
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(answer.status_message().message.contains("not valid gzip"));

    let answer = post(
        addr,
        "application/json",
        &[],
        br#"{"resourceMetrics":[{"scopeMetrics":7}]}"#.to_vec(),
    )
    .await;
    assert_eq!(answer.status, 400);
    let status = answer.json();
    assert_eq!(status["code"], 3);
    assert_eq!(
        status["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(
        status["details"][0]["fieldViolations"][0]["field"],
        "resourceMetrics[0].scopeMetrics"
    );

    let answer = post(addr, "text/plain", &[], b"cpu 1".to_vec()).await;
    assert_eq!(answer.status, 415);
    assert!(answer.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("application/x-protobuf")));
    let answer = post(addr, PROTOBUF, &[("content-encoding", "br")], vec![]).await;
    assert_eq!(answer.status, 415);

    // Nothing of the above was published: the next frame is this.
    let fine = gauges(vec![("after", vec![gauge_point(1.0, vec![])])]);
    assert_eq!(
        post(addr, PROTOBUF, &[], fine.encode_to_vec()).await.status,
        200
    );
    let metrics = next_metrics(&mut client).await;
    assert_eq!(metrics.keys().collect::<Vec<_>>(), ["after"]);
}

#[tokio::test]
async fn refused_points_are_counted_in_a_partial_success_and_the_rest_is_delivered() {
    let worker = start_worker::<InProcess>("w", On::OwnMemory, &[]).await;
    let mut client = Client::connect(worker.addr()).await;
    let many: Vec<KeyValue> = (0..40)
        .map(|i| attribute(&format!("k{i:02}"), "v"))
        .collect();
    let long = "x".repeat(300);
    let request = gauges(vec![
        (
            "cpu",
            vec![
                gauge_point(f64::NAN, vec![]),
                gauge_point(12.5, vec![attribute("long", &long)]),
            ],
        ),
        ("bad\u{1b}name", vec![gauge_point(1.0, vec![])]),
        ("wide", vec![gauge_point(2.0, many)]),
    ]);
    let answer = post(worker.addr(), PROTOBUF, &[], request.encode_to_vec()).await;
    assert_eq!(answer.status, 200);
    let partial = answer
        .response()
        .partial_success
        .unwrap_or_else(|| panic!("no partial_success"));
    assert_eq!(partial.rejected_data_points, 2);
    let message = partial.error_message;
    assert!(message.starts_with("2 data points refused"), "{message}");
    assert!(
        message.contains("metrics[0].gauge.dataPoints[0] (cpu): value: must be a finite number"),
        "{message}"
    );
    assert!(
        message.contains("name: must not contain control characters"),
        "{message}"
    );
    assert!(
        message.contains("1 attribute values shortened to 256 bytes"),
        "{message}"
    );
    // 40 of its own and service.name: 9 beyond 32.
    assert!(
        message.contains("9 attributes dropped beyond 32 labels"),
        "{message}"
    );

    let metrics = next_metrics(&mut client).await;
    assert_eq!(metrics.len(), 2, "{metrics:?}");
    assert_eq!(metrics["cpu"]["value"], 12.5);
    assert_eq!(
        metrics["cpu"]["labels"]["long"].as_str().map(str::len),
        Some(256)
    );
    assert_eq!(metrics["cpu"]["labels"]["service.name"], "svc");
    let wide = metrics["wide"]["labels"].as_object().map(|l| l.len());
    assert_eq!(wide, Some(32));

    // Everything accepted: no partial_success at all.
    let fine = gauges(vec![("ok", vec![gauge_point(1.0, vec![])])]);
    let answer = post(worker.addr(), PROTOBUF, &[], fine.encode_to_vec()).await;
    assert_eq!(answer.response(), ExportMetricsServiceResponse::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_credential_scope_and_rate_hold_as_for_the_json_api() {
    let worker = start_worker::<InProcess>(
        "w",
        On::OwnMemory,
        &["--auth-secret", SECRET, "--publish-rate", "1"],
    )
    .await;
    let addr = worker.addr();
    let reader = valid_token(json!({"sub": "reader"}));
    let mut client = Client::connect_with_token(addr, &reader).await;

    // The SDK without a token, or a request with one that may not publish: refused.
    let refused = export_with_sdk(Exporter::to(addr)).await;
    assert!(refused.is_err(), "the export without a token succeeded");
    let body = gauges(vec![("cpu", vec![gauge_point(1.0, vec![])])]).encode_to_vec();
    let answer = post(addr, PROTOBUF, &[], body.clone()).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.status_message().code, 16, "UNAUTHENTICATED");
    let bearer = |token: &str| format!("Bearer {token}");
    let answer = post(
        addr,
        PROTOBUF,
        &[("authorization", &bearer(&reader))],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.status_message().code, 7, "PERMISSION_DENIED");

    // A scoped publisher: a point without its label refuses the whole request.
    let scoped = valid_token(json!({"sub": "acme", "publish": true, "where": {"tenant": "acme"}}));
    let answer = post(
        addr,
        PROTOBUF,
        &[("authorization", &bearer(&scoped))],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, 403);
    let message = answer.status_message().message;
    assert!(message.contains("lacks label tenant=acme"), "{message}");

    // The SDK with a publishing token: delivered.
    let publisher = valid_token(json!({"sub": "sdk", "publish": true}));
    let exporter = Exporter {
        token: Some(publisher.clone()),
        ..Exporter::to(addr)
    };
    export_with_sdk(exporter)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_the_sdk_export(&next_metrics(&mut client).await);

    // --publish-rate 1: the same credential again at once is throttled, retryable.
    let answer = post(
        addr,
        PROTOBUF,
        &[("authorization", &bearer(&publisher))],
        body,
    )
    .await;
    assert_eq!(answer.status, 429);
    assert!(answer.retry_after.is_some(), "429 without Retry-After");
    assert_eq!(answer.status_message().code, 8, "RESOURCE_EXHAUSTED");
}

#[tokio::test]
async fn more_points_than_the_limit_are_413_and_nothing_is_published() {
    let worker = start_worker::<InProcess>("w", On::OwnMemory, &["--otlp-max-points", "2"]).await;
    let mut client = Client::connect(worker.addr()).await;
    let three = gauges(vec![
        (
            "a",
            vec![gauge_point(1.0, vec![]), gauge_point(2.0, vec![])],
        ),
        ("b", vec![gauge_point(3.0, vec![])]),
    ]);
    let answer = post(worker.addr(), PROTOBUF, &[], three.encode_to_vec()).await;
    assert_eq!(answer.status, 413);
    let message = answer.status_message().message;
    assert!(
        message.contains("3 data points") && message.contains("--otlp-max-points"),
        "{message}"
    );

    // Gzipped, a body that inflates past --max-body-bytes is 413 too.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&vec![0u8; 300 * 1024])
        .unwrap_or_else(|e| panic!("{e}"));
    let bomb = gzip.finish().unwrap_or_else(|e| panic!("{e}"));
    let answer = post(
        worker.addr(),
        PROTOBUF,
        &[("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(answer.status, 413);

    let two = gauges(vec![(
        "c",
        vec![gauge_point(4.0, vec![]), gauge_point(5.0, vec![])],
    )]);
    assert_eq!(
        post(worker.addr(), PROTOBUF, &[], two.encode_to_vec())
            .await
            .status,
        200
    );
    let frame = loop {
        let frame = client.next_frame().await;
        if frame["type"] == "metrics" {
            break frame;
        }
    };
    let names: Vec<&str> = frame["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["c", "c"],
        "only the request within the limit: {frame}"
    );
}
