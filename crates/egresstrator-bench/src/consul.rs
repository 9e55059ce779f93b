//! Consul KV for the benchmark: its ACL keys live under one prefix of its own
//! (`egt-bench/<run>/`), which is deleted at the end.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Clone)]
pub struct Consul {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Consul {
    /// `addr` is `host:port` or `http://host:port`.
    pub fn new(addr: &str) -> Result<Consul> {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build http client")?;
        let token = std::env::var("CONSUL_HTTP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Ok(Consul { base, token, http })
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.token {
            Some(t) => r.header("X-Consul-Token", t),
            None => r,
        }
    }

    /// Fails with a clear message when Consul does not answer.
    pub async fn check(&self) -> Result<()> {
        let url = format!("{}/v1/status/leader", self.base);
        let r = self
            .request(reqwest::Method::GET, &url)
            .send()
            .await
            .with_context(|| format!("consul at {} does not answer (GET {url})", self.base))?;
        if !r.status().is_success() {
            bail!(
                "consul at {} answered {} to GET {url}",
                self.base,
                r.status()
            );
        }
        Ok(())
    }

    pub async fn put(&self, key: &str, value: &str) -> Result<()> {
        let url = format!("{}/v1/kv/{key}", self.base);
        let r = self
            .request(reqwest::Method::PUT, &url)
            .body(value.to_string())
            .send()
            .await
            .with_context(|| format!("consul kv put {key} failed"))?;
        if !r.status().is_success() {
            bail!("consul kv put {key} answered {}", r.status());
        }
        Ok(())
    }

    /// Registers (or replaces) a service instance with the local agent.
    pub async fn register_service(
        &self,
        id: &str,
        name: &str,
        addr: &str,
        port: u16,
    ) -> Result<()> {
        let url = format!("{}/v1/agent/service/register", self.base);
        let body = serde_json::json!({ "ID": id, "Name": name, "Address": addr, "Port": port });
        let r = self
            .request(reqwest::Method::PUT, &url)
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("consul service register {id} failed"))?;
        if !r.status().is_success() {
            bail!("consul service register {id} answered {}", r.status());
        }
        Ok(())
    }

    /// Deregisters a service instance from the local agent.
    pub async fn deregister_service(&self, id: &str) -> Result<()> {
        let url = format!("{}/v1/agent/service/deregister/{id}", self.base);
        let r = self
            .request(reqwest::Method::PUT, &url)
            .send()
            .await
            .with_context(|| format!("consul service deregister {id} failed"))?;
        if !r.status().is_success() {
            bail!("consul service deregister {id} answered {}", r.status());
        }
        Ok(())
    }

    /// Deletes every key under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let url = format!("{}/v1/kv/{prefix}?recurse=true", self.base);
        let r = self
            .request(reqwest::Method::DELETE, &url)
            .send()
            .await
            .with_context(|| format!("consul kv delete -recurse {prefix} failed"))?;
        if !r.status().is_success() {
            bail!("consul kv delete -recurse {prefix} answered {}", r.status());
        }
        Ok(())
    }

    /// Times `reps` recursive reads of `prefix` (what the agent does to build a policy).
    pub async fn time_reads(&self, prefix: &str, reps: usize) -> Result<Vec<f64>> {
        let url = format!("{}/v1/kv/{prefix}?recurse=true", self.base);
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            let r = self
                .request(reqwest::Method::GET, &url)
                .send()
                .await
                .with_context(|| format!("consul kv read {prefix} failed"))?;
            let code = r.status();
            r.bytes()
                .await
                .with_context(|| format!("consul kv read {prefix}: cannot read body"))?;
            if !code.is_success() {
                bail!("consul kv read {prefix} answered {code}");
            }
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(samples)
    }
}
