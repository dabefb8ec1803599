//! Loading: defaults, then the TOML file, then `TRIBUTARY__*` environment variables.

use std::path::Path;

use super::{Config, ConfigError, ENV_PREFIX};

impl Config {
    /// Loads the config: defaults, then `path` (if any), then `TRIBUTARY__*` variables of the
    /// process environment; then validates it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (tests inject it).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let label = path.map_or("<none>".to_string(), |p| p.display().to_string());
        Self::from_toml_str_with_env(&text, &label, env)
    }

    /// Parses TOML text layered over the defaults and under `env`, then validates.
    pub fn from_toml_str_with_env(
        text: &str,
        label: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: label.to_string(),
            message: e.message().to_string(),
        })?;
        let defaults = toml::Table::try_from(Config::default()).map_err(|e| {
            ConfigError::invalid("<defaults>", format!("cannot serialize defaults: {e}"))
        })?;
        let mut merged = defaults;
        merge_tables(&mut merged, file);
        apply_env(&mut merged, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::invalid(key, e.into_inner().message().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies `TRIBUTARY__SECTION__KEY=value` overrides. The value takes the type of the key it
/// replaces (so `TRIBUTARY__SOURCE__TOPIC=123` stays a string); new keys are parsed as TOML
/// scalars when they parse, else kept as strings.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) || path.len() < 2 {
            return Err(ConfigError::Env {
                var,
                message: "expected TRIBUTARY__SECTION__KEY".into(),
            });
        }
        let (last, parents) = path.split_last().ok_or_else(|| ConfigError::Env {
            var: var.clone(),
            message: "empty key".into(),
        })?;
        let mut cur = &mut *table;
        for p in parents {
            let entry = cur
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{p}` is not a section"),
                    });
                }
            };
        }
        let value = typed_env_value(cur.get(last), &raw).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        cur.insert(last.clone(), value);
    }
    Ok(())
}

fn typed_env_value(existing: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    use toml::Value;
    match existing {
        Some(Value::String(_)) => Ok(Value::String(raw.to_string())),
        Some(Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        Some(Value::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        Some(Value::Boolean(_)) => raw
            .trim()
            .parse::<bool>()
            .map(Value::Boolean)
            .map_err(|_| format!("expected true or false, got {raw:?}")),
        Some(Value::Array(_) | Value::Table(_)) => {
            let doc = format!("v = {raw}");
            toml::from_str::<toml::Table>(&doc)
                .ok()
                .and_then(|mut t| t.remove("v"))
                .ok_or_else(|| "expected a TOML array or inline table".to_string())
        }
        // A key without a default (an optional one: passwords, endpoints, a field's type) is a
        // string, whatever it looks like: `TRIBUTARY__REDIS__PASSWORD=123456` is the password
        // "123456", not the number. Only arrays and tables are parsed.
        _ => {
            let trimmed = raw.trim_start();
            if trimmed.starts_with('[') || trimmed.starts_with('{') {
                let doc = format!("v = {raw}");
                if let Some(v) = toml::from_str::<toml::Table>(&doc)
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                {
                    return Ok(v);
                }
            }
            Ok(Value::String(raw.to_string()))
        }
    }
}
