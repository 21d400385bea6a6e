//! `fruits featurize --cluster` on a real multi-process Ballista cluster.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{fruits, read_parquet_dir, run_ok, success_json, training};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Float32Type;

/// `path → (label, features)` of an output folder.
fn rows(out: &Path) -> BTreeMap<String, (String, Vec<f32>)> {
    let mut rows = BTreeMap::new();
    for b in read_parquet_dir(&out.join("features")) {
        let (paths, labels, feats) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_string::<i32>(),
            b.column(2).as_fixed_size_list(),
        );
        for i in 0..b.num_rows() {
            let v = feats.value(i).as_primitive::<Float32Type>().values().to_vec();
            let old = rows.insert(paths.value(i).to_string(), (labels.value(i).to_string(), v));
            assert!(old.is_none(), "{} twice", paths.value(i));
        }
    }
    rows
}

/// The bytes of each data file of a dataset folder, in file-name order (names
/// carry the job id, so they differ between runs; contents must not).
fn data_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
#[ignore = "end-to-end: a real scheduler and executors with the installed model; scripts/test runs it"]
fn a_two_executor_cluster_gives_the_in_process_result_and_both_executors_work() {
    let cluster = Cluster::start(2, 1);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for class in ["Lemon 1", "Banana 1"] {
        std::os::unix::fs::symlink(training().join(class), input.join(class)).unwrap();
    }
    let featurize = |out: &Path, cluster: Option<&str>| {
        let mut cmd = fruits();
        cmd.arg("featurize")
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(out)
            .args(["--rows-per-task", "8", "--sorted"]);
        if let Some(url) = cluster {
            cmd.args(["--cluster", url]);
        }
        run_ok(&mut cmd);
    };
    let (remote, local) = (tmp.path().join("remote"), tmp.path().join("local"));
    featurize(&remote, Some(&cluster.url()));
    featurize(&local, None);

    let summary = success_json(&remote);
    assert_eq!(summary["engine"], format!("ballista-cluster {}", cluster.url()));
    assert_eq!(
        summary["executors_used"].as_array().unwrap().len(),
        2,
        "both executors ran tasks: {summary}"
    );
    let r = rows(&remote);
    assert_eq!(r.len(), 246);
    let in_file_order: Vec<String> = read_parquet_dir(&remote.join("features"))
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_string::<i32>()
                .iter()
                .map(|p| p.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(in_file_order.is_sorted(), "rows are written sorted by path");
    for dir in ["features", "errors"] {
        assert_eq!(
            data_files(&remote.join(dir)),
            data_files(&local.join(dir)),
            "{dir}: the cluster wrote other bytes than the in-process engine"
        );
    }
}

#[test]
fn an_unreachable_scheduler_is_a_clear_one_line_error_within_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let port = common::s3::free_port();
    let started = Instant::now();
    let out = fruits()
        .arg("featurize")
        .arg("--input")
        .arg(training().join("Lemon 1"))
        .arg("--output")
        .arg(tmp.path().join("o"))
        .args(["--cluster", &format!("df://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach the scheduler") && stderr.contains("connection refused"),
        "{stderr}"
    );
    assert!(!tmp.path().join("o/_SUCCESS").exists());
}

/// Starts featurizing the shared Training folder on `cluster`, in the background.
fn start_job(out: &Path, cluster: &Cluster, extra: &[&str]) -> std::process::Child {
    fruits()
        .arg("featurize")
        .arg("--input")
        .arg(training())
        .arg("--output")
        .arg(out)
        .args(["--cluster", &cluster.url()])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "end-to-end: a real scheduler and executors with the installed model; scripts/test runs it"]
fn killing_an_executor_mid_job_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(2, 1);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let job = start_job(&out, &cluster, &["--limit", "2000", "--rows-per-task", "50"]);
    // Both executors take tasks; one is killed without warning in the middle
    // of its first task (50 images take it hundreds of milliseconds), so
    // the task is lost with it and must run again elsewhere. (Had it finished
    // tasks first, the client could find their results gone: Ballista does
    // not recompute a lost executor's finished outputs for the client.)
    cluster.executors[0].wait_for("started a task", |e| e.tasks_started >= 1);
    let victim = cluster.executors.pop().unwrap();
    victim.wait_for("started a task", |e| e.tasks_started >= 1);
    victim.signal("-STOP");
    let at_kill = victim.events();
    drop(victim);
    assert_eq!(at_kill.tasks_finished, 0, "killed in the middle of its first task");
    let result = job.wait_with_output().unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let rows = rows(&out);
    assert_eq!(
        rows.len(),
        2000,
        "every image exactly once (duplicates would have failed the map insert)"
    );
    let summary = success_json(&out);
    assert_eq!(summary["featurized"], 2000);
    assert_eq!(summary["failed"], 0);
}

#[test]
#[ignore = "end-to-end: a real scheduler and executors with the installed model; scripts/test runs it"]
fn an_executor_that_joins_mid_job_takes_tasks() {
    let mut cluster = Cluster::start(1, 1);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let job = start_job(
        &out,
        &cluster,
        &[
            "--limit",
            "1200",
            "--rows-per-task",
            "24",
            "--parallelism",
            "25",
            "--input-size",
            "100",
        ],
    );
    // 25 tasks (of two 24-image manifest files each), whatever this machine's
    // cores. The first executor finishes one and is then frozen, so that
    // tasks are still pending however fast this machine is...
    let first = &cluster.executors[0];
    first.wait_for("finished a task", |e| e.tasks_finished >= 1);
    first.signal("-STOP");
    // ...when the late executor has registered (the scheduler then offers it
    // pending tasks at once). The first resumes well within the executor
    // timeout (10 s), so it is not taken for dead.
    cluster.add_executor(1);
    cluster.executors[0].signal("-CONT");
    let result = job.wait_with_output().unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert_eq!(rows(&out).len(), 1200);
    let summary = success_json(&out);
    assert_eq!(
        summary["executors_used"].as_array().unwrap().len(),
        2,
        "the late executor worked: {summary}"
    );
    assert!(summary["bytes_read"].as_u64().unwrap() > 1_000_000, "{summary}");
}

#[test]
#[ignore = "end-to-end: a real scheduler and executors with the installed model; scripts/test runs it"]
fn run_on_the_cluster_fits_the_in_process_model() {
    let cluster = Cluster::start(2, 1);
    let tmp = tempfile::tempdir().unwrap();
    let (train, test) = common::holdout_split(tmp.path());
    let run = |out: &Path, cluster: Option<&str>| {
        let mut cmd = common::fruits_run(&train, &test, out);
        cmd.args(["--rows-per-task", "64"]);
        if let Some(url) = cluster {
            cmd.args(["--cluster", url]);
        }
        run_ok(&mut cmd);
        let pca: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(common::bundle_file(&out.join("model"), "pca")).unwrap())
                .unwrap();
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report/metrics.json")).unwrap()).unwrap();
        (pca, metrics)
    };
    let (remote_pca, remote_metrics) = run(&tmp.path().join("remote"), Some(&cluster.url()));
    let (local_pca, local_metrics) = run(&tmp.path().join("local"), None);
    assert_eq!(remote_pca["k"], local_pca["k"]);
    assert_eq!(remote_pca["rows"], local_pca["rows"]);
    let floats =
        |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    for key in ["mean", "components", "explained_variance_ratio"] {
        let worst = floats(&remote_pca[key])
            .iter()
            .zip(floats(&local_pca[key]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "{key}: cluster and in-process differ by {worst}");
    }
    for name in ["logistic_regression", "random_forest"] {
        let (r, l) = (
            remote_metrics["classifiers"][name]["accuracy"].as_f64().unwrap(),
            local_metrics["classifiers"][name]["accuracy"].as_f64().unwrap(),
        );
        assert!((r - l).abs() < 0.005, "{name}: {r} on the cluster, {l} in-process");
    }
}

#[test]
#[ignore = "end-to-end: a real scheduler and executors with the installed model; scripts/test runs it"]
fn executors_limited_to_their_prefixes_refuse_plans_that_read_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (allowed, elsewhere) = (tmp.path().join("lake"), tmp.path().join("elsewhere"));
    common::link_class_images("Lemon 1", 10, &allowed.join("in"));
    common::link_class_images("Kiwi 1", 10, &allowed.join("in"));
    common::link_class_images("Banana 1", 5, &elsewhere.join("in"));
    let limit = vec!["--allow-prefix".to_string(), allowed.display().to_string()];
    let cluster = Cluster::start_with(1, 2, &limit);
    let url = cluster.url();
    let featurize =
        |input: &Path, out: &Path| common::featurize(input, out, &["--rows-per-task", "8", "--cluster", &url]);
    // Inside its prefixes the cluster works as ever.
    run_ok(&mut featurize(&allowed.join("in"), &allowed.join("out")));
    assert_eq!(rows(&allowed.join("out")).len(), 20);

    // Images outside: each is refused on the executor, an errors/ row.
    run_ok(&mut featurize(&elsewhere.join("in"), &allowed.join("out2")));
    let summary = success_json(&allowed.join("out2"));
    assert_eq!(
        (summary["featurized"].as_u64(), summary["failed"].as_u64()),
        (Some(0), Some(5))
    );
    for batch in read_parquet_dir(&allowed.join("out2/errors")) {
        for error in batch.column(1).as_string::<i32>().iter().flatten() {
            assert!(error.contains("outside the prefixes"), "{error}");
        }
    }

    // A plan whose files lie outside (here the job's own manifest, written
    // by the client under an output the executors may not open) fails, in
    // one clear line, and nothing is committed.
    let out = featurize(&allowed.join("in"), &elsewhere.join("out")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("outside the prefixes"), "{stderr}");
    assert!(!elsewhere.join("out/_SUCCESS").exists());
}

/// A CA and, signed by it, certificates for the cluster's DNS name
/// (`fruits-cluster`) in `dir`: `ca.pem`, `node.{pem,key}` (scheduler and
/// executors), `client.{pem,key}`; and `rogue.{pem,key}`, signed by another CA.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    };
    let (ca_cert, issuer) = ca("fruits test CA");
    let (_, other) = ca("another CA");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    for (name, by) in [("node", &issuer), ("client", &issuer), ("rogue", &other)] {
        let mut params = CertificateParams::new(vec!["fruits-cluster".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, by).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

#[test]
#[ignore = "end-to-end: a real scheduler and executors with the installed model; scripts/test runs it"]
fn a_tls_cluster_featurizes_for_a_client_with_a_certificate_and_refuses_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    certificates(&certs);
    let input = tmp.path().join("in");
    for class in ["Lemon 1", "Kiwi 1"] {
        common::link_class_images(class, 10, &input);
    }
    let file = |name: &str| certs.join(name).display().to_string();
    let node = [
        "--tls-ca",
        &file("ca.pem"),
        "--tls-cert",
        &file("node.pem"),
        "--tls-key",
        &file("node.key"),
    ]
    .map(String::from);
    // On 127.0.0.2: Ballista's own servers take 127.0.0.1, same ports.
    let cluster = Cluster::start_on(2, 1, &node, "127.0.0.2");
    let featurize = |out: &Path, identity: Option<&str>| {
        let mut cmd = fruits();
        cmd.arg("featurize")
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(out)
            .args(["--rows-per-task", "4", "--sorted", "--cluster", &cluster.url()]);
        if let Some(name) = identity {
            cmd.env("FRUITS_TLS_CA", file("ca.pem"))
                .env("FRUITS_TLS_CERT", file(&format!("{name}.pem")))
                .env("FRUITS_TLS_KEY", file(&format!("{name}.key")));
        }
        cmd
    };
    // With the cluster's certificate: the whole job, tasks on both executors
    // and a sorted merge that fetches between them, all over TLS.
    let out = tmp.path().join("out");
    run_ok(&mut featurize(&out, Some("client")));
    assert_eq!(rows(&out).len(), 20);
    for e in &cluster.executors {
        assert!(e.events().tasks_finished > 0, "both executors work: {:?}", e.events());
    }

    // Without a certificate, or with one of another CA: refused at the
    // handshake, in seconds, and nothing is committed.
    for identity in [None, Some("rogue")] {
        let out = tmp.path().join(format!("refused-{}", identity.unwrap_or("none")));
        let started = Instant::now();
        let refused = featurize(&out, identity).output().unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{identity:?} was served: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
        assert!(!out.join("_SUCCESS").exists());
    }

    // An executor without a certificate cannot join: it gives up and exits.
    let port = common::s3::free_port();
    let mut rogue = fruits()
        .args(["executor", "--scheduler", &format!("127.0.0.2:{}", cluster.port)])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = rogue.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rogue executor is still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
}
