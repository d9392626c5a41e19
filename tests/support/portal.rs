//! An emulated Bitrix24 portal as a `b24-emulator` process on a port of its
//! own, reached through its incoming webhook and its admin API.

use std::path::Path;

use serde_json::Value;

use crate::process::Process;

pub struct EmulatedPortal {
    pub domain: String,
    pub port: u16,
    /// `USER_ID/SECRET` of its incoming webhook.
    hook: String,
    process: Process,
}

impl EmulatedPortal {
    /// Starts a portal for `domain` on `port` with the incoming webhook
    /// `1:SECRET` and the JSON `seed` (pipelines, users…).
    pub async fn start(dir: &Path, domain: &str, port: u16, secret: &str, seed: &Value) -> Self {
        let seed_path =
            b24_testkit::config::write(dir, &format!("{domain}.seed.json"), &seed.to_string());
        let args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--domain".to_owned(),
            domain.to_owned(),
            "--webhook".to_owned(),
            format!("1:{secret}:crm,user"),
            "--seed".to_owned(),
            seed_path.display().to_string(),
        ];
        let process = Self::spawn(dir, domain, &args).await;
        EmulatedPortal {
            domain: domain.to_owned(),
            port,
            hook: format!("1/{secret}"),
            process,
        }
    }

    async fn spawn(dir: &Path, domain: &str, args: &[String]) -> Process {
        let logdir = dir.join(domain);
        std::fs::create_dir_all(&logdir).expect("the portal's log directory");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = Process::start("b24-emulator", &args, &logdir);
        let url = format!("http://{}/_emulator/requests", crate::local(port_of(&args)));
        let client = crate::http();
        crate::wait_until(&format!("{domain} answers"), crate::GENEROUS, || {
            let client = client.clone();
            let url = url.clone();
            async move { crate::status_of(&client, &url).await == 200 }
        })
        .await;
        assert!(process.is_running(), "{domain} exited:\n{}", process.log());
        process
    }

    /// The incoming webhook's URL, as the relay's secret file holds it.
    pub fn webhook_url(&self) -> String {
        format!("http://127.0.0.1:{}/rest/{}/", self.port, self.hook)
    }

    /// Calls a REST method through the webhook; the whole answer.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let url = format!("{}{method}.json", self.webhook_url());
        crate::http()
            .post(url)
            .json(&params)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} on {}: {}", self.domain, e.without_url()))
            .json()
            .await
            .expect("a JSON answer")
    }

    /// The deals it stores (camelCase fields), read through the admin API,
    /// which answers even while the portal is "down".
    pub async fn deals(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/_emulator/records/deal", self.port);
        let answer: Value = crate::http()
            .get(url)
            .send()
            .await
            .expect("the admin API answers")
            .json()
            .await
            .expect("a JSON answer");
        answer.as_array().cloned().unwrap_or_default()
    }

    /// REST requests it has received, all methods together.
    pub async fn requests(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/_emulator/requests", self.port);
        let answer: Value = match crate::http().get(url).send().await {
            Ok(answer) => answer.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        answer
            .as_object()
            .map_or(0, |counts| counts.values().filter_map(Value::as_u64).sum())
    }

    /// What the emulator wrote (its log).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `PUT /_emulator/faults` (latency, errors, "down").
    pub async fn faults(&self, faults: Value) {
        let url = format!("http://127.0.0.1:{}/_emulator/faults", self.port);
        let answer = crate::http()
            .put(url)
            .json(&faults)
            .send()
            .await
            .expect("the admin API answers");
        assert!(answer.status().is_success(), "faults: {}", answer.status());
    }
}

fn port_of(args: &[&str]) -> u16 {
    let listen = args[args
        .iter()
        .position(|a| *a == "--listen")
        .expect("--listen")
        + 1];
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}
