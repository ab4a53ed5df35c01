//! `render --target kubernetes`: the token service's objects (ConfigMap, Deployment, Service,
//! PodDisruptionBudget, NetworkPolicy) and a Gateway API HTTPRoute for the issuer's host,
//! from the operator config and its `kubernetes:` block. No secret value is read or written:
//! the config's `*_file` fields point at the mounts of the Secrets the block names, and an
//! inline secret is refused.

use serde_json::{json, Map, Value};
use sha2::Digest as _;

use crate::config::{Config, StorageBackend};
use crate::config_kubernetes::{
    client_secret_key, route_client_secret_key, KubernetesConfig, ENCRYPTION_KEY_KEY,
    INITIAL_ACCESS_TOKEN_KEY, INTERNAL_CREDENTIAL_KEY, OIDC_CLIENT_SECRET_KEY, OUTBOUND_CA_KEY,
    POSTGRES_URL_KEY, SIGNING_KEY_KEY,
};

/// Where the ConfigMap is mounted, and the config file in it.
pub const CONFIG_DIR: &str = "/etc/warden";
pub const CONFIG_FILE: &str = "/etc/warden/warden.yaml";
/// Each named Secret is mounted at `<SECRETS_DIR>/<secret name>/`.
pub const SECRETS_DIR: &str = "/var/run/secrets/warden";
/// The SQLite volume's mount.
pub const DATA_DIR: &str = "/var/lib/warden";
/// The token service image's user (and group).
pub const RUN_AS: u32 = 65532;
/// The pod's grace period beyond the service's own drain bound
/// (`authorization_server.shutdown_grace_seconds`): the time to exit before the kubelet kills.
pub const TERMINATION_GRACE_MARGIN_SECONDS: u64 = 10;
/// How long a terminating pod keeps serving before it gets SIGTERM (`preStop` sleep): the
/// Service's endpoints and the gateways' copies of them drop it meanwhile, so no new
/// connection (the filter's JWKS, look-ups and feed polls have no retry) meets a closed port.
pub const DRAIN_SECONDS: u64 = 5;
/// The `app.kubernetes.io/name` of the token service's objects.
pub const APP_NAME: &str = "warden-token-service";
/// The container's name.
pub const CONTAINER: &str = "token-service";

/// Everything the objects are made of, checked: the config, its `kubernetes:` block, and the
/// ConfigMap's `warden.yaml`.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub config: &'a Config,
    pub k: &'a KubernetesConfig,
    /// The token service's `warden.yaml` as the pod reads it.
    pub warden_yaml: String,
    /// The Secrets mounted into the token service's pod, in the order of `kubernetes.secrets`.
    pub mounted: Vec<String>,
    /// The token service's image, pinned by digest when one was given.
    pub token_service_image: String,
}

/// `sha256:<64 lowercase hex>`, as `make images` writes it; `what` names the option.
pub fn check_digest(digest: &str, what: &str) -> Result<(), String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{what}: must be sha256:<64 hex digits>, got {digest:?}"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "{what}: must be sha256:<64 lowercase hex digits>, got {digest:?}"
        ));
    }
    Ok(())
}

/// The mount path of `key` in Secret `secret`.
pub fn secret_path(secret: &str, key: &str) -> String {
    format!("{SECRETS_DIR}/{secret}/{key}")
}

/// A Secret key as Kubernetes accepts it (`[-._a-zA-Z0-9]+`).
fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// `value[key]` as an object, made one when absent or null.
fn object<'v>(value: &'v mut Value, key: &str) -> Result<&'v mut Map<String, Value>, String> {
    let Value::Object(map) = value else {
        return Err(format!("{key}: expected a mapping"));
    };
    let entry = map.entry(key.to_string()).or_insert(Value::Null);
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry
        .as_object_mut()
        .ok_or_else(|| format!("{key}: expected a mapping"))
}

fn refuse_inline(field: &str, secret: &str, key: &str, file_field: &str) -> String {
    format!(
        "{field}: a ConfigMap is not a secret store: name a Secret in kubernetes.secrets.{secret} (key `{key}`) and set {file_field} instead"
    )
}

impl<'a> Plan<'a> {
    /// Checks what the render needs beyond the config's own validation, and writes the
    /// pod's `warden.yaml`. `raw` is the operator's file as parsed YAML (the ConfigMap keeps
    /// what the operator wrote, with listeners and file paths set for the pod).
    pub fn new(
        config: &'a Config,
        raw: &Value,
        token_service_digest: Option<&str>,
    ) -> Result<Self, String> {
        let k = config.kubernetes.as_ref().ok_or(
            "kubernetes: required by `render --target kubernetes|istio` (names, images, Secrets: see the README's \"Deploying on Kubernetes and Istio\")",
        )?;
        let s = &k.secrets;
        let mut doc = raw.clone();
        let Value::Object(top) = &mut doc else {
            return Err("the configuration must be a mapping".into());
        };
        top.remove("kubernetes");
        let a = &config.authorization_server;
        let need = |name: &Option<String>, field: &str, because: &str| {
            name.clone().ok_or_else(|| {
                format!("kubernetes.secrets.{field}: required: {because} reads from it")
            })
        };

        // Listeners: a pod must accept its Service's traffic.
        {
            let auth = object(&mut doc, "authorization_server")?;
            auth.insert(
                "listen".into(),
                format!("0.0.0.0:{}", a.listen.port()).into(),
            );
            auth.insert(
                "internal_listen".into(),
                format!("0.0.0.0:{}", a.internal_listen.port()).into(),
            );
            auth.insert(
                "internal_credential_file".into(),
                secret_path(&s.internal_credential, INTERNAL_CREDENTIAL_KEY).into(),
            );
        }
        // The signing key file is only an import source; with the Secret named it is imported.
        match (&s.signing_key, a.signing_key.as_ref().and_then(|k| k.file.as_ref())) {
            (Some(secret), _) => {
                let auth = object(&mut doc, "authorization_server")?;
                let mut signing = auth
                    .get("signing_key")
                    .cloned()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                signing["file"] = secret_path(secret, SIGNING_KEY_KEY).into();
                auth.insert("signing_key".into(), signing);
            }
            (None, Some(_)) => {
                return Err(
                    "kubernetes.secrets.signing_key: required: authorization_server.signing_key.file reads from it".into(),
                )
            }
            (None, None) => {}
        }
        let reg = &a.registration;
        if reg.initial_access_token_file.is_none() && reg.initial_access_token.is_some() {
            return Err(refuse_inline(
                "authorization_server.registration.initial_access_token",
                "client_secrets",
                INITIAL_ACCESS_TOKEN_KEY,
                "initial_access_token_file",
            ));
        }
        if reg.initial_access_token_file.is_some() {
            let secret = need(
                &s.client_secrets,
                "client_secrets",
                "authorization_server.registration.initial_access_token_file",
            )?;
            let auth = object(&mut doc, "authorization_server")?;
            // Only a mapping can name the file (the `registration: <mode>` shorthand cannot).
            if let Some(Value::Object(r)) = auth.get_mut("registration") {
                r.insert(
                    "initial_access_token_file".into(),
                    secret_path(&secret, INITIAL_ACCESS_TOKEN_KEY).into(),
                );
            }
        }

        // The extra CA: its file is the mounted Secret's (the operator's path is not in the pod).
        match (&s.outbound_ca, &config.outbound.extra_ca_file) {
            (Some(secret), _) => {
                object(&mut doc, "outbound")?.insert(
                    "extra_ca_file".into(),
                    secret_path(secret, OUTBOUND_CA_KEY).into(),
                );
            }
            (None, Some(_)) => return Err(
                "kubernetes.secrets.outbound_ca: required: outbound.extra_ca_file reads from it"
                    .into(),
            ),
            (None, None) => {}
        }

        // Storage.
        let st = &config.storage;
        if !st.previous_encryption_key_files.is_empty() {
            return Err("storage.previous_encryption_key_files: not rendered yet: finish the rotation (the re-seal) before rendering, or mount the old keys yourself".into());
        }
        match (&s.encryption_key, &st.encryption_key_file) {
            (Some(secret), _) => {
                object(&mut doc, "storage")?.insert(
                    "encryption_key_file".into(),
                    secret_path(secret, ENCRYPTION_KEY_KEY).into(),
                );
            }
            (None, Some(_)) => {
                return Err(
                    "kubernetes.secrets.encryption_key: required: storage.encryption_key_file reads from it".into(),
                )
            }
            // SQLite: created beside the database, on its volume.
            (None, None) => {}
        }
        match config.storage.backend() {
            StorageBackend::Sqlite(path) => {
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "warden.db".into());
                object(&mut doc, "storage")?
                    .insert("sqlite".into(), format!("{DATA_DIR}/{file}").into());
                if s.postgres_url.is_some() {
                    return Err(
                        "kubernetes.secrets.postgres_url: named, but storage.postgres is not used"
                            .into(),
                    );
                }
            }
            StorageBackend::Postgres(pg) => {
                if pg.url_file.is_none() {
                    return Err(refuse_inline(
                        "storage.postgres.url",
                        "postgres_url",
                        POSTGRES_URL_KEY,
                        "storage.postgres.url_file",
                    ));
                }
                let secret = need(&s.postgres_url, "postgres_url", "storage.postgres.url_file")?;
                if let Some(Value::Object(p)) =
                    doc.get_mut("storage").and_then(|v| v.get_mut("postgres"))
                {
                    p.insert(
                        "url_file".into(),
                        secret_path(&secret, POSTGRES_URL_KEY).into(),
                    );
                }
            }
        }

        // Client secrets.
        if let Some(o) = &config.identity_provider.oidc {
            if o.client_secret_file.is_none() && o.client_secret.is_some() {
                return Err(refuse_inline(
                    "identity_provider.oidc.client_secret",
                    "client_secrets",
                    OIDC_CLIENT_SECRET_KEY,
                    "client_secret_file",
                ));
            }
            if o.client_secret_file.is_some() {
                let secret = need(
                    &s.client_secrets,
                    "client_secrets",
                    "identity_provider.oidc.client_secret_file",
                )?;
                if let Some(Value::Object(m)) = doc
                    .get_mut("identity_provider")
                    .and_then(|v| v.get_mut("oidc"))
                {
                    m.insert(
                        "client_secret_file".into(),
                        secret_path(&secret, OIDC_CLIENT_SECRET_KEY).into(),
                    );
                }
            }
        }
        for (i, c) in config.clients.iter().enumerate() {
            let key = client_secret_key(&c.client_id);
            if c.client_secret_file.is_none() && c.client_secret.is_some() {
                return Err(refuse_inline(
                    &format!("clients[{i}].client_secret"),
                    "client_secrets",
                    &key,
                    "client_secret_file",
                ));
            }
            if c.client_secret_file.is_none() {
                continue;
            }
            if !is_secret_key(&key) {
                return Err(format!(
                    "clients[{i}].client_id: its client secret's key `{key}` is not a Secret key (letters, digits, - . _)"
                ));
            }
            let secret = need(
                &s.client_secrets,
                "client_secrets",
                &format!("clients[{i}].client_secret_file"),
            )?;
            if let Some(Value::Object(m)) = doc.get_mut("clients").and_then(|v| v.get_mut(i)) {
                m.insert(
                    "client_secret_file".into(),
                    secret_path(&secret, &key).into(),
                );
            }
        }
        for (i, r) in config.routes.iter().enumerate() {
            let Some(u) = r.upstream_oauth2() else {
                continue;
            };
            let at = format!("routes[{i}].mcp.server.upstream_oauth2");
            let key = route_client_secret_key(&r.name);
            if u.client_secret_file.is_none() && u.client_secret.is_some() {
                return Err(refuse_inline(
                    &format!("{at}.client_secret"),
                    "client_secrets",
                    &key,
                    "client_secret_file",
                ));
            }
            if u.client_secret_file.is_none() {
                continue;
            }
            if !is_secret_key(&key) {
                return Err(format!(
                    "routes[{i}].name: its client secret's key `{key}` is not a Secret key (letters, digits, - . _)"
                ));
            }
            let secret = need(
                &s.client_secrets,
                "client_secrets",
                &format!("{at}.client_secret_file"),
            )?;
            if let Some(Value::Object(m)) = doc
                .get_mut("routes")
                .and_then(|v| v.get_mut(i))
                .and_then(|v| v.get_mut("mcp"))
                .and_then(|v| v.get_mut("server"))
                .and_then(|v| v.get_mut("upstream_oauth2"))
            {
                m.insert(
                    "client_secret_file".into(),
                    secret_path(&secret, &key).into(),
                );
            }
        }

        let warden_yaml = serde_yaml::to_string(&doc).map_err(|e| e.to_string())?;
        // The session key is the gateway's: not mounted here.
        let mut mounted: Vec<String> = Vec::new();
        for (field, name) in s.named() {
            if field != "session_key" && !mounted.iter().any(|m| m == name) {
                mounted.push(name.to_string());
            }
        }
        let token_service_image = match token_service_digest {
            Some(d) => {
                check_digest(d, "--token-service-digest")?;
                format!("{}@{d}", k.images.token_service)
            }
            None => k.images.token_service.clone(),
        };
        Ok(Plan {
            config,
            k,
            warden_yaml,
            mounted,
            token_service_image,
        })
    }

    /// The token service Service's DNS name.
    pub fn fqdn(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.k.token_service.name, self.k.namespace, self.k.cluster_domain
        )
    }

    /// The Service port of the public listener (`http`).
    pub fn http_port(&self) -> u16 {
        self.k.token_service.port
    }

    /// The Service port of the internal listener (`internal`): its own port.
    pub fn internal_port(&self) -> u16 {
        self.config.authorization_server.internal_listen.port()
    }

    /// Istio's outbound cluster for a Service port of the token service.
    pub fn cluster(&self, service_port: u16) -> String {
        format!("outbound|{service_port}||{}", self.fqdn())
    }

    pub fn labels(&self) -> Value {
        json!({
            "app.kubernetes.io/name": APP_NAME,
            "app.kubernetes.io/instance": self.k.token_service.name,
        })
    }

    fn metadata(&self, name: &str) -> Value {
        json!({"name": name, "namespace": self.k.namespace, "labels": self.labels()})
    }

    fn uses_sqlite(&self) -> bool {
        matches!(self.config.storage.backend(), StorageBackend::Sqlite(_))
    }

    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.k.token_service.name)
    }

    pub fn config_map(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.metadata(&self.config_map_name()),
            "data": {"warden.yaml": self.warden_yaml},
        })
    }

    pub fn deployment(&self) -> Value {
        let t = &self.k.token_service;
        let a = &self.config.authorization_server;
        let mut mounts = vec![
            json!({"name": "warden-config", "mountPath": CONFIG_DIR, "readOnly": true}),
            json!({"name": "warden-tmp", "mountPath": "/tmp"}),
        ];
        let mut volumes = vec![
            json!({"name": "warden-config", "configMap": {"name": self.config_map_name()}}),
            json!({"name": "warden-tmp", "emptyDir": {}}),
        ];
        for secret in &self.mounted {
            mounts.push(json!({"name": secret, "mountPath": format!("{SECRETS_DIR}/{secret}"), "readOnly": true}));
            // Owner and group read (the pod's fsGroup), nobody else.
            volumes.push(
                json!({"name": secret, "secret": {"secretName": secret, "defaultMode": 0o440}}),
            );
        }
        if let (true, Some(claim)) = (self.uses_sqlite(), &t.sqlite_claim) {
            mounts.push(json!({"name": "warden-data", "mountPath": DATA_DIR}));
            volumes.push(
                json!({"name": "warden-data", "persistentVolumeClaim": {"claimName": claim}}),
            );
        }
        let probe = |path: &str, period: u32| {
            json!({
                "httpGet": {"path": path, "port": "http"},
                "periodSeconds": period,
                "timeoutSeconds": 2,
                "failureThreshold": 3,
            })
        };
        // A restart follows a changed ConfigMap (there is no reload).
        let config_digest = sha2::Sha256::digest(self.warden_yaml.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        // SQLite is one process's file on a ReadWriteOnce volume: never two pods at once.
        let strategy = if self.uses_sqlite() {
            json!({"type": "Recreate"})
        } else {
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
        };
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.metadata(&t.name),
            "spec": {
                "replicas": t.replicas,
                "selector": {"matchLabels": self.labels()},
                "strategy": strategy,
                "template": {
                    "metadata": {
                        "labels": self.labels(),
                        "annotations": self.pod_annotations(config_digest),
                    },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "terminationGracePeriodSeconds": DRAIN_SECONDS + self.config.authorization_server.shutdown_grace_seconds + TERMINATION_GRACE_MARGIN_SECONDS,
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": RUN_AS,
                            "runAsGroup": RUN_AS,
                            "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": CONTAINER,
                            "image": self.token_service_image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["--config", CONFIG_FILE],
                            "ports": [
                                {"name": "http", "containerPort": a.listen.port(), "protocol": "TCP"},
                                {"name": "internal", "containerPort": a.internal_listen.port(), "protocol": "TCP"},
                            ],
                            // The image has no shell: Kubernetes' own sleep (1.30 and later).
                            "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
                            "livenessProbe": probe("/healthz", 10),
                            "readinessProbe": probe("/readyz", 5),
                            "resources": self.k.token_service.resources,
                            "securityContext": {
                                "runAsNonRoot": true,
                                "runAsUser": RUN_AS,
                                "runAsGroup": RUN_AS,
                                "readOnlyRootFilesystem": true,
                                "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "volumeMounts": mounts,
                        }],
                        "volumes": volumes,
                    },
                },
            },
        })
    }

    pub fn service(&self) -> Value {
        // `appProtocol: http`: Istio treats both ports as HTTP (the filter's call-outs and
        // the JWKS fetch are HTTP/1.1 requests).
        let ports = vec![
            json!({"name": "http", "port": self.http_port(), "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}),
            json!({"name": "internal", "port": self.internal_port(), "targetPort": "internal", "protocol": "TCP", "appProtocol": "http"}),
        ];
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(&self.k.token_service.name),
            "spec": {"type": "ClusterIP", "selector": self.labels(), "ports": ports},
        })
    }

    pub fn pod_disruption_budget(&self) -> Value {
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": self.metadata(&self.k.token_service.name),
            "spec": {
                "minAvailable": self.k.token_service.min_available(),
                "selector": {"matchLabels": self.labels()},
            },
        })
    }

    /// The config's digest (a change rolls the pods) and, with `telemetry.metrics`, where
    /// Prometheus' pod discovery scrapes: `/metrics` on the internal port.
    fn pod_annotations(&self, config_digest: String) -> Value {
        let mut annotations = json!({"mcp-warden.dev/config-sha256": config_digest});
        if self.config.telemetry.metrics {
            annotations["prometheus.io/scrape"] = "true".into();
            annotations["prometheus.io/port"] = self.internal_port().to_string().into();
            annotations["prometheus.io/path"] = crate::metrics::METRICS_PATH.into();
        }
        annotations
    }

    /// The public port from anywhere (the issuer is public); the internal one only from
    /// the gateway's pods and, with `telemetry.metrics`, the `metrics_scrapers`.
    pub fn network_policy(&self) -> Value {
        let a = &self.config.authorization_server;
        let g = &self.k.gateway;
        let mut internal_peers = vec![json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": g.namespace}},
            "podSelector": {"matchLabels": g.selector},
        })];
        // A scraper only where there is something to scrape.
        if self.config.telemetry.metrics {
            internal_peers.extend(self.k.metrics_scrapers.iter().map(|p| {
                json!({
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": p.namespace}},
                    "podSelector": {"matchLabels": p.selector},
                })
            }));
        }
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self.metadata(&self.k.token_service.name),
            "spec": {
                "podSelector": {"matchLabels": self.labels()},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"ports": [{"port": a.listen.port(), "protocol": "TCP"}]},
                    {
                        "from": internal_peers,
                        "ports": [{"port": a.internal_listen.port(), "protocol": "TCP"}],
                    },
                ],
            },
        })
    }

    /// The issuer's host through the Gateway API gateway named in `kubernetes.gateway`.
    pub fn http_route(&self) -> Result<Value, String> {
        let host = issuer_host(self.config)?;
        Ok(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": self.metadata(&self.k.token_service.name),
            "spec": {
                "parentRefs": [{"name": self.k.gateway.name, "namespace": self.k.gateway.namespace}],
                "hostnames": [host],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": self.k.token_service.name, "port": self.http_port()}],
                }],
            },
        }))
    }

    /// The token service's objects, in apply order.
    pub fn token_service_objects(&self) -> Vec<Value> {
        vec![
            self.config_map(),
            self.deployment(),
            self.service(),
            self.pod_disruption_budget(),
            self.network_policy(),
        ]
    }
}

/// The host of a URL a gateway serves (`routes[].from`, the issuer): a DNS name, on the
/// scheme's default port (the gateway's servers listen on 80 and 443).
pub fn gateway_host(url: &str, field: &str) -> Result<(String, bool), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{field}: not a URL: {e}"))?;
    let https = match parsed.scheme() {
        "https" => true,
        "http" => false,
        _ => return Err(format!("{field}: must be http or https")),
    };
    if parsed.port().is_some() {
        return Err(format!(
            "{field}: the gateway serves ports 80 and 443 only: leave the port out of {url}"
        ));
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        _ => {
            return Err(format!(
                "{field}: the gateway routes DNS names, not addresses: {url}"
            ))
        }
    };
    if !crate::config_kubernetes::is_dns_subdomain(&host) || host == "localhost" {
        return Err(format!(
            "{field}: {host} is not a DNS name a gateway can serve"
        ));
    }
    Ok((host, https))
}

/// The issuer's host.
pub fn issuer_host(config: &Config) -> Result<String, String> {
    gateway_host(
        &config.authorization_server.issuer,
        "authorization_server.issuer",
    )
    .map(|(h, _)| h)
}

/// Multi-document YAML: a comment, then each object after `---`.
pub fn to_yaml(comment: &str, objects: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for line in comment.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The comment heading a render: where it comes from, and the gateway's environment (the
/// Secrets it is set from; the gateway's Deployment is Istio's, not rendered here).
pub fn header(plan: &Plan<'_>, target: &str) -> String {
    let s = &plan.k.secrets;
    format!(
        "Rendered by `warden-token-service render --target {target}`; edit warden.yaml, not this file.\n\
         The gateway pods ({gw_ns}, labels {labels}) need in their environment:\n  \
         MCP_WARDEN_SESSION_KEY from Secret {session} key `key`\n  \
         MCP_WARDEN_INTERNAL_CREDENTIAL from Secret {internal} key `{INTERNAL_CREDENTIAL_KEY}` (the same Secret the token service mounts)",
        gw_ns = plan.k.gateway.namespace,
        labels = plan
            .k
            .gateway
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        session = s.session_key,
        internal = s.internal_credential,
    )
}

/// `render --target kubernetes`.
pub fn render(plan: &Plan<'_>) -> Result<String, String> {
    let mut objects = plan.token_service_objects();
    objects.push(plan.http_route()?);
    to_yaml(&header(plan, "kubernetes"), &objects)
}
