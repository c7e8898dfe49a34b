//! The example Prometheus alert rules of docs/controller.md, as the tests read them: the
//! ```yaml block under its "### Alerting" heading. Shared by daemon.rs (every metric they use
//! is one /metrics exports) and packaging.rs (promtool checks and tests them).

/// The rule file's text.
pub fn documented() -> String {
    let path = crate::repo_root().join("docs/controller.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let section = doc
        .split("### Alerting\n")
        .nth(1)
        .expect("docs/controller.md has an \"### Alerting\" section");
    section
        .split("```yaml\n")
        .nth(1)
        .and_then(|block| block.split("\n```").next())
        .map(|rules| format!("{rules}\n"))
        .expect("the Alerting section has a ```yaml block")
}

/// Every `hippo_gitops_*` metric name the rules' expressions use, with its rule's name.
pub fn metrics_used() -> Vec<(String, String)> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&documented()).unwrap();
    let mut used = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().unwrap_or_default().to_string();
            for name in rule["expr"]
                .as_str()
                .unwrap()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("hippo_gitops_"))
            {
                used.push((alert.clone(), name.to_string()));
            }
        }
    }
    used
}
