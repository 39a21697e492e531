//! librdkafka property tables (`[kafka.client]`, `[kafka.producer]`,
//! `[kafka.consumer]`) and the secrets among them.
//!
//! Dotted keys may be written bare (`security.protocol = "SASL_SSL"`, which
//! TOML reads as nested tables) or quoted; both become one flat property.
//! A secret (`sasl.password`, key and keystore passwords, a PEM key, an OAuth
//! client secret) is refused when written literally: it is named by
//! `<key>.env = "VAR"` (an environment variable) or `<key>.file = "path"` (the
//! file's first line), resolved once at load, and shown as `***` in any
//! printed config.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

/// librdkafka properties whose value is a secret.
pub const SECRET_KEYS: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

/// Properties naming a file: resolved against the config file's folder.
const PATH_KEYS: &[&str] = &[
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
    "sasl.kerberos.keytab",
];

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// A value that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One table of librdkafka properties.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties {
    plain: BTreeMap<String, String>,
    sources: BTreeMap<String, SecretSource>,
    secrets: BTreeMap<String, Secret>,
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.plain {
            m.entry(k, v);
        }
        for k in self.sources.keys() {
            m.entry(k, &"***");
        }
        m.finish()
    }
}

impl Properties {
    /// Every property with its value, secrets included: for librdkafka only.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.plain
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(self.secrets.iter().map(|(k, v)| (k.as_str(), v.expose())))
    }

    /// Sets `key` unless the config set it.
    pub fn set_default(&mut self, key: &str, value: &str) {
        self.plain
            .entry(key.to_string())
            .or_insert_with(|| value.to_string());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.plain.get(key).map(String::as_str)
    }

    /// Every value a printed config or message must not contain.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.secrets.values().map(Secret::expose)
    }

    /// Reads each secret from its variable or file; relative paths (secret
    /// files and the file properties) are taken from `dir`.
    pub fn resolve(
        &mut self,
        table: &str,
        dir: Option<&Path>,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        let full = |p: &Path| match dir {
            Some(d) if p.is_relative() => d.join(p),
            _ => p.to_path_buf(),
        };
        for k in PATH_KEYS {
            if let Some(v) = self.plain.get_mut(*k) {
                *v = full(Path::new(v.as_str())).display().to_string();
            }
        }
        for (k, src) in &self.sources {
            let value = match src {
                SecretSource::Env(var) => env(var).ok_or_else(|| {
                    format!("{table}.{k}.env: the environment variable {var} is not set")
                })?,
                SecretSource::File(p) => {
                    let p = full(p);
                    let text = std::fs::read_to_string(&p)
                        .map_err(|e| format!("{table}.{k}.file {}: {e}", p.display()))?;
                    text.lines().next().unwrap_or("").to_string()
                }
            };
            self.secrets.insert(k.clone(), Secret(value));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        let mut flat = BTreeMap::new();
        flatten("", &table, &mut flat).map_err(D::Error::custom)?;
        let mut out = Properties::default();
        for (k, v) in flat {
            if SECRET_KEYS.contains(&k.as_str()) {
                return Err(D::Error::custom(format!(
                    "{k} is a secret and is not accepted in the config text: \
                     name its source with {k}.env = \"VARIABLE\" or {k}.file = \"path\""
                )));
            }
            let secret = [(".env", true), (".file", false)]
                .iter()
                .find_map(|(sfx, is_env)| {
                    let stem = k.strip_suffix(sfx)?;
                    SECRET_KEYS
                        .contains(&stem)
                        .then(|| (stem.to_string(), *is_env))
                });
            match secret {
                Some((stem, true)) => {
                    out.sources.insert(stem, SecretSource::Env(v));
                }
                Some((stem, false)) => {
                    out.sources
                        .insert(stem, SecretSource::File(PathBuf::from(v)));
                }
                None => {
                    out.plain.insert(k, v);
                }
            }
        }
        Ok(out)
    }
}

fn flatten(
    prefix: &str,
    t: &toml::Table,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let s = match v {
            toml::Value::Table(t) => {
                flatten(&key, t, out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            _ => return Err(format!("{key}: expected a string, number or boolean")),
        };
        if out.insert(key.clone(), s).is_some() {
            return Err(format!("{key} is given twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Properties, String> {
        #[derive(Deserialize)]
        struct T {
            p: Properties,
        }
        toml::from_str::<T>(text)
            .map(|t| t.p)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn bare_and_quoted_dotted_keys_are_one_property() {
        let p = parse(
            "[p]\nsecurity.protocol = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\nsocket.keepalive.enable = true\n",
        )
        .unwrap();
        let all: Vec<_> = p.iter().collect();
        assert_eq!(
            all,
            [
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("security.protocol", "SASL_SSL"),
                ("socket.keepalive.enable", "true"),
            ]
        );
    }

    #[test]
    fn a_literal_secret_is_refused_naming_the_ways_to_give_it() {
        for text in [
            "[p]\nsasl.password = \"hunter2\"\n",
            "[p]\n\"ssl.key.password\" = \"hunter2\"\n",
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(".env") && e.contains(".file"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn secrets_come_from_env_or_file_and_never_show_in_debug() {
        let dir = std::env::temp_dir().join(format!("falcon-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key.pw"), "k3y-pass\nignored\n").unwrap();
        let mut p = parse(
            "[p]\nsasl.password.env = \"KPW\"\nssl.key.password.file = \"key.pw\"\nssl.ca.location = \"ca.pem\"\n",
        )
        .unwrap();
        p.resolve("kafka.client", Some(&dir), &|k| {
            (k == "KPW").then(|| "s3cret".to_string())
        })
        .unwrap();
        let all: BTreeMap<_, _> = p.iter().collect();
        assert_eq!(all["sasl.password"], "s3cret");
        assert_eq!(all["ssl.key.password"], "k3y-pass");
        assert_eq!(
            all["ssl.ca.location"],
            dir.join("ca.pem").display().to_string()
        );
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("k3y-pass"),
            "{shown}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_missing_secret_variable_names_the_key_and_the_variable() {
        let mut p = parse("[p]\nsasl.password.env = \"NOPE\"\n").unwrap();
        let e = p.resolve("kafka.client", None, &|_| None).unwrap_err();
        assert!(
            e.contains("kafka.client.sasl.password.env") && e.contains("NOPE"),
            "{e}"
        );
    }
}
