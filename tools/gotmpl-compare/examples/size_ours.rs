//! Size probe: parses and renders a template from argv with egresstrator-template only.
use egresstrator_template::{
    parse, CatalogQuery, CatalogService, DataSource, KvEntry, KvRef, ServiceInstance, ServiceQuery,
};

struct Nothing;

impl DataSource for Nothing {
    fn env(&self, _: &str) -> Option<String> {
        None
    }
    fn key(&self, _: &KvRef) -> Result<Option<String>, String> {
        Ok(None)
    }
    fn list(&self, _: &KvRef) -> Result<Vec<KvEntry>, String> {
        Ok(vec![])
    }
    fn service(&self, _: &ServiceQuery) -> Result<Vec<ServiceInstance>, String> {
        Ok(vec![])
    }
    fn services(&self, _: &CatalogQuery) -> Result<Vec<CatalogService>, String> {
        Ok(vec![])
    }
    fn now_unix(&self) -> i64 {
        0
    }
}

fn main() {
    let text = std::env::args().nth(1).unwrap_or_default();
    match parse("t", &text).and_then(|t| t.render(&Nothing)) {
        Ok(r) => println!("{}", r.output),
        Err(e) => println!("{e}"),
    }
}
