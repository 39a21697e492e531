//! What the operator watches, against the real servers: `/metrics` scraped
//! while base runs (parsed as Prometheus text format, its counters equal to
//! the summary at the end), `status` from another machine (its chunk counts
//! equal to what the base shards report), and the run reports rendered by
//! headless Chromium.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, Scrape, Value};
use support::{Job, Outcome};

/// A port of our own for this test process (several test binaries may run).
fn metrics_port() -> u16 {
    19464 + (std::process::id() % 500) as u16
}

/// One GET /metrics; None while nothing listens.
fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    Some(body.to_string())
}

/// Parses a scrape; every line must be one the text format knows.
fn parse(text: &str) -> Scrape {
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "not Prometheus text format: {line:?}"
        );
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a Prometheus scrape")
}

/// The value of the series of `metric` with exactly these labels.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

/// A running process whose stdout (one JSON summary) is read by a thread.
struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
}

fn spawn(mut c: Command) -> Running {
    let mut child = c.spawn().expect("spawn falcon-migrate");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Running { child, stdout: rx }
}

impl Running {
    fn stderr(&mut self) -> String {
        let mut e = String::new();
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut e);
        }
        e
    }

    fn finish(mut self) -> (i32, serde_json::Value, String) {
        let status = self.child.wait().unwrap();
        let line: String = self.stdout.iter().collect();
        let err = self.stderr();
        let json = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("summary ({e}): {line}\nstderr: {err}"));
        (status.code().unwrap_or(-1), json, err)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_during_base_equal_its_summary_at_the_end() {
    let job = Job::new("metrics", 20_000, true).await;
    let port = metrics_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = spawn(job.base_command(&[
        "--workers",
        "2",
        "--chunk-rows",
        "2000",
        "--max-rows-per-sec",
        "6000",
        "--metrics-addr",
        &addr,
        "--metrics-linger",
        "60",
    ]));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut during = 0;
    let summary_line = loop {
        assert!(Instant::now() < deadline, "base did not finish");
        if let Ok(line) = run.stdout.try_recv() {
            break line;
        }
        if let Some(text) = scrape(port) {
            let s = parse(&text);
            let running = value(&s, "falcon_run_end_time_seconds", &[]).is_none();
            let read = value(&s, "falcon_rows_read_total", &[("table", "message")]);
            if running && read.is_some_and(|r| r > 0.0) {
                during += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(during >= 2, "only {during} scrapes saw the copy running");

    // The phase is over and lingering: the last scrape holds the final counts.
    let summary: serde_json::Value = serde_json::from_str(&summary_line).unwrap();
    let s = parse(&scrape(port).expect("/metrics stays up for --metrics-linger"));
    assert_eq!(
        value(
            &s,
            "falcon_run_info",
            &[("phase", "base"), ("run_id", "base"), ("shard", "0/1")]
        ),
        Some(1.0)
    );
    assert!(value(&s, "falcon_run_end_time_seconds", &[]).is_some());
    let mut chunks = 0.0;
    for t in summary["tables"].as_array().unwrap() {
        let table = t["table"].as_str().unwrap();
        let n = |k: &str| t[k].as_f64().unwrap();
        let base = [("phase", "base"), ("table", table)];
        assert_eq!(
            value(&s, "falcon_rows_read_total", &base),
            Some(n("rows_read")),
            "{table}"
        );
        assert_eq!(
            value(&s, "falcon_rows_dead_lettered_total", &base),
            Some(n("dead_lettered")),
            "{table}"
        );
        for target in ["kafka", "hbase"] {
            let labels = [("phase", "base"), ("table", table), ("target", target)];
            assert_eq!(
                value(&s, "falcon_rows_written_total", &labels),
                t["written"][target].as_f64(),
                "{table} {target}"
            );
        }
        assert_eq!(
            value(&s, "falcon_base_chunks_done_total", &[("table", table)]),
            Some(n("chunks_done")),
            "{table}"
        );
        assert_eq!(
            value(&s, "falcon_base_chunks", &[("table", table)]),
            Some(n("chunks")),
            "{table}"
        );
        chunks += n("chunks_done");
    }
    assert!(
        summary["dead_lettered"].as_u64().unwrap() > 0,
        "the dirty rows"
    );
    // One Kafka transaction and one latency observation per chunk.
    let unit = [("unit", "base_chunk")];
    assert_eq!(
        value(&s, "falcon_kafka_transactions_total", &unit),
        Some(chunks)
    );
    assert_eq!(
        value(&s, "falcon_unit_duration_seconds", &unit),
        Some(chunks)
    );
    assert_eq!(
        value(&s, "falcon_kafka_commit_duration_seconds", &unit),
        Some(chunks)
    );
    let hist = s
        .samples
        .iter()
        .find(|x| x.metric == "falcon_unit_duration_seconds")
        .unwrap();
    let Value::Histogram(buckets) = &hist.value else {
        panic!("a histogram: {hist:?}")
    };
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative"
    );

    // The port is taken: another phase refuses to start (exit 2), writing nothing.
    let other = Outcome::from(
        job.migrate_command("verify", &["--metrics-addr", &addr])
            .output()
            .unwrap(),
    );
    assert_eq!(other.code, 2, "{}", other.stderr);
    assert!(other.stderr.contains("--metrics-addr"), "{}", other.stderr);

    let _ = run.child.kill();
    let code = run.child.wait().unwrap().code();
    assert_ne!(code, Some(0), "killed while lingering");
}

fn status(job: &Job, state_dir: &Path) -> serde_json::Value {
    let out = Outcome::from(
        job.migrate_command_in("status", state_dir, &[])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_from_another_machine_reports_what_the_shards_committed() {
    let job = Job::new("status", 20_000, false).await;
    let elsewhere = job.dir.join("another-machine");
    std::fs::create_dir_all(&elsewhere).unwrap();

    let before = status(&job, &elsewhere);
    assert_eq!(before["base"]["state"], "not started");
    assert_eq!(before["diff"]["state"], "not started");
    assert_eq!(before["verify"]["state"], "never run");

    // A third machine watches the whole copy: `status --watch 1 --json`
    // prints one JSON line a second until Ctrl-C.
    let watcher = spawn(job.migrate_command_in("status", &elsewhere, &["--watch", "1"]));

    // Two shards on two "machines" (state dirs), both running.
    let shards: Vec<Running> = (0..2)
        .map(|i| {
            let dir = job.dir.join(format!("machine-{i}"));
            let shard = format!("{i}/2");
            spawn(job.migrate_command_in(
                "base",
                &dir,
                &[
                    "--shard",
                    &shard,
                    "--workers",
                    "2",
                    "--chunk-rows",
                    "2000",
                    "--max-rows-per-sec",
                    "3000",
                ],
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen_copying = false;
    while !seen_copying {
        assert!(Instant::now() < deadline, "no status showed the copy");
        let s = status(&job, &elsewhere);
        let b = &s["base"];
        if b["state"] == "copying" && b["chunks_done"].as_u64().unwrap() > 0 {
            seen_copying = true;
            assert!(b["chunks_done"].as_u64() <= b["chunks_total"].as_u64().or(Some(u64::MAX)));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let summaries: Vec<serde_json::Value> = shards
        .into_iter()
        .map(|r| {
            let (code, json, err) = r.finish();
            assert_eq!(code, 0, "{err}");
            json
        })
        .collect();

    let s = status(&job, &elsewhere);
    let b = &s["base"];
    assert_eq!(b["state"], "finished");
    assert_eq!(b["eta_s"], 0.0);

    // The watcher saw the copy progress and end where the shards ended; a
    // Ctrl-C ends it with exit 0.
    std::thread::sleep(Duration::from_millis(2_500));
    watched_until_the_end(watcher, b);
    let sum = |table: &str, k: &str| -> u64 {
        summaries
            .iter()
            .flat_map(|x| x["tables"].as_array().unwrap())
            .filter(|t| t["table"] == table)
            .map(|t| t[k].as_u64().unwrap())
            .sum()
    };
    for t in b["tables"].as_array().unwrap() {
        let table = t["table"].as_str().unwrap();
        assert_eq!(
            t["chunks_done"].as_u64().unwrap(),
            sum(table, "chunks_done"),
            "{table}"
        );
        assert_eq!(
            t["chunks_total"].as_u64().unwrap(),
            sum(table, "chunks"),
            "{table}"
        );
        assert_eq!(
            t["rows"].as_u64().unwrap(),
            sum(table, "rows_read"),
            "{table}"
        );
    }
    assert_eq!(b["tables"].as_array().unwrap().len(), 4);
    for (i, summary) in summaries.iter().enumerate() {
        let sh = &b["shards"][i];
        assert_eq!(sh["state"], "finished");
        let chunks: u64 = summary["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["chunks"].as_u64().unwrap())
            .sum();
        assert_eq!(sh["chunks_total"].as_u64(), Some(chunks), "shard {i}");
        assert_eq!(sh["chunks_done"].as_u64(), Some(chunks), "shard {i}");
    }

    // Diff and verify, seen from the other machine too.
    job.churn(50.0, 2.0, 11).await;
    let diff = job.diff(&["--until-now"]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    let verify = job.verify(&["--recheck-delay", "0"]);
    assert_eq!(verify.code, 0, "{}", verify.stderr);
    let s = status(&job, &elsewhere);
    assert_eq!(s["diff"]["position"], diff.json()["to"]);
    assert!(s["diff"]["lag_s"].as_f64().is_some(), "{s}");
    assert!(
        s["diff"]["last_batch_age_s"].as_f64().unwrap() < 120.0,
        "{s}"
    );
    assert_eq!(s["verify"]["state"], "identical");
    assert_eq!(s["verify"]["last"]["compared"], verify.json()["compared"]);
}

/// Stops a `status --watch --json` with SIGINT and checks its lines: every
/// one a status, chunks done never going back, at least one line during the
/// copy, and the last one equal to `finished` (the final one-shot status).
fn watched_until_the_end(mut watcher: Running, finished: &serde_json::Value) {
    let pid = watcher.child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    // Bounded: a watch that ignores Ctrl-C fails here instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = watcher.child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = watcher.child.kill();
            let _ = watcher.child.wait();
            panic!("status --watch still running 30 s after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = watcher.stderr();
    assert_eq!(status.code(), Some(0), "status --watch after Ctrl-C: {err}");
    let lines: Vec<serde_json::Value> = watcher
        .stdout
        .iter()
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 3, "{} lines: {lines:?}", lines.len());
    let done = |s: &serde_json::Value| s["base"]["chunks_done"].as_u64().unwrap_or(0);
    for w in lines.windows(2) {
        assert!(done(&w[0]) <= done(&w[1]), "chunks went back: {w:?}");
    }
    assert!(
        lines.iter().any(|s| s["base"]["state"] == "copying"),
        "no line during the copy"
    );
    let last = &lines.last().unwrap()["base"];
    assert_eq!(last["state"], "finished");
    assert_eq!(last["chunks_done"], finished["chunks_done"]);
    assert_eq!(last["tables"], finished["tables"]);
}

/// Runs headless Chromium; its exit status must be 0.
fn chromium(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("chromium (Debian's package; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (non-white pixels, colourful pixels) of a PNG screenshot.
fn pixels(png_path: &Path) -> (usize, usize, usize) {
    let file = std::io::BufReader::new(std::fs::File::open(png_path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("screenshot colour type {other:?}"),
    };
    let (mut ink, mut colour, mut all) = (0, 0, 0);
    for p in buf[..info.buffer_size()].chunks(step) {
        all += 1;
        let (max, min) = (p[..3].iter().max().unwrap(), p[..3].iter().min().unwrap());
        if *min < 235 {
            ink += 1;
        }
        if max - min > 80 {
            colour += 1;
        }
    }
    (ink, colour, all)
}

/// The report of `phase` in the state dir (the newest).
fn report_of(state_dir: &Path, phase: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(state_dir.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "html")
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{phase}-"))
        })
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("no {phase} report"))
}

/// The `d` attributes of the `<path class="series">` elements of the SVG `id`.
fn series_paths(dom: &str, id: &str) -> Vec<String> {
    let start = dom
        .find(&format!("<svg id=\"{id}\""))
        .unwrap_or_else(|| panic!("no <svg id={id}> in the DOM"));
    let svg = &dom[start..start + dom[start..].find("</svg>").unwrap()];
    svg.split("<path class=\"series\"")
        .skip(1)
        .map(|p| {
            let d = p.split(" d=\"").nth(1).unwrap();
            d[..d.find('"').unwrap()].to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_render_their_charts_in_headless_chromium() {
    use std::os::unix::fs::PermissionsExt;
    let job = Job::new("reports", 8_000, true).await;
    let base = job.base(&[
        "--workers",
        "2",
        "--chunk-rows",
        "1000",
        "--max-rows-per-sec",
        "3000",
    ]);
    assert_eq!(base.code, 3, "dead letters: {}", base.stderr);
    job.churn(100.0, 3.0, 5).await;
    let diff = job.diff(&["--until-now", "--max-batch", "20"]);
    assert!(diff.code == 0 || diff.code == 3, "{}", diff.stderr);
    let verify = job.verify(&["--recheck-delay", "0"]);
    assert_eq!(verify.code, 0, "{}", verify.stderr);

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("observe");
    std::fs::create_dir_all(&shots).unwrap();
    for phase in ["base", "diff", "verify"] {
        let html = report_of(&job.state_dir, phase);
        let json = html.with_extension("json");
        for f in [&html, &json] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let data: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(data["phase"], phase);
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="));

        let url = format!("file://{}", html.display());
        let dom = chromium(&["--dump-dom", &url]);
        let shot = shots.join(format!("{phase}-report.png"));
        let _ = std::fs::remove_file(&shot);
        chromium(&[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,1500",
            &url,
        ]);
        let (ink, colour, all) = pixels(&shot);
        eprintln!(
            "{phase} report {}: screenshot {} ({ink} of {all} pixels not white, {colour} coloured)",
            html.display(),
            shot.display()
        );
        assert!(ink > all / 50, "{phase}: a blank page ({ink} of {all})");

        match phase {
            "base" => {
                // One line per table and target, each with points; one bar per reason.
                let paths = series_paths(&dom, "rows-per-s");
                assert_eq!(paths.len(), 8, "4 tables × 2 targets: {paths:?}");
                let longest = paths
                    .iter()
                    .map(|d| d.matches(" L").count() + 1)
                    .max()
                    .unwrap();
                assert!(longest >= 3, "rows/s sampled over the run: {paths:?}");
                let reasons: usize = data["dead_letters"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|r| r.as_object().unwrap().len())
                    .sum();
                assert!(reasons > 0);
                assert_eq!(dom.matches("class=\"bar\"").count(), reasons);
                let summed: u64 = data["dead_letters"]
                    .as_object()
                    .unwrap()
                    .values()
                    .flat_map(|r| r.as_object().unwrap().values())
                    .map(|n| n.as_u64().unwrap())
                    .sum();
                assert_eq!(summed, base.json()["dead_lettered"].as_u64().unwrap());
                // The chart lines are drawn in colour.
                assert!(colour > 500, "charts drawn: {colour} coloured pixels");
            }
            "diff" => {
                let paths = series_paths(&dom, "lag");
                assert_eq!(paths.len(), 1);
                assert!(paths[0].starts_with('M'));
                assert!(!data["lag_s"]["points"].as_array().unwrap().is_empty());
            }
            _ => {
                assert!(dom.contains("<table id=\"verdicts\">"));
                assert_eq!(
                    dom.matches("<tr class=\"good\">").count(),
                    8,
                    "4 tables × 2 targets"
                );
                assert_eq!(data["verdicts"].as_array().unwrap().len(), 8);
            }
        }
    }
}
