//! A real Kubernetes control plane — etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler — on free loopback ports, with its own CA and an admin client
//! certificate.
//!
//! There is no kubelet: objects are stored, validated, admitted, watched, garbage-collected,
//! Deployments become ReplicaSets and pods, pods are scheduled and namespaces are
//! finalized exactly as in a cluster, but a pod runs only where a [`crate::LocalNode`]
//! serves the node it is bound to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::process::Supervised;
use crate::tools::{binary, free_port};
use crate::{Error, Result};

/// How long the control plane gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often starting components are looked at.
const POLL: Duration = Duration::from_millis(250);

/// A running etcd + kube-apiserver + kube-controller-manager; stopped and deleted when dropped.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    apiserver_port: u16,
    // Field order is stop order: scheduler, controller-manager, then apiserver, then etcd.
    scheduler: Option<Supervised>,
    controller_manager: Option<Supervised>,
    apiserver: Option<Supervised>,
    etcd: Option<Supervised>,
}

impl ControlPlane {
    /// Starts a fresh control plane in `dir` and waits until the apiserver is ready.
    pub async fn start(dir: &Path) -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(dir).await {
                Ok(cp) => return Ok(cp),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Timeout("starting the control plane".into())))
    }

    async fn try_start(dir: &Path) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the control plane dir", e))?;
        let pki = Pki::write(dir)?;
        let mut cp = Self {
            dir: dir.to_owned(),
            apiserver_port: free_port()?,
            scheduler: None,
            controller_manager: None,
            apiserver: None,
            etcd: None,
        };
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        cp.etcd = Some(Supervised::spawn(
            "etcd",
            &binary("etcd")?,
            &[
                "--name=weir".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
                format!("--initial-cluster=weir=http://127.0.0.1:{etcd_peer_port}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &dir.join("etcd.log"),
        )?);
        let p = |name: &str| dir.join(name).display().to_string();
        cp.apiserver = Some(Supervised::spawn(
            "kube-apiserver",
            &binary("kube-apiserver")?,
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={}", cp.apiserver_port),
                format!("--cert-dir={}", p("apiserver-certs")),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=RBAC".into(),
                "--enable-priority-and-fairness=false".into(),
                "--endpoint-reconciler-type=none".into(),
                "--profiling=false".into(),
                "--v=0".into(),
            ],
            &dir.join("kube-apiserver.log"),
        )?);
        pki.write_kubeconfig(&cp.kubeconfig_path(), cp.apiserver_port)?;
        cp.wait_ready().await?;
        let mut args = cp.component_args("controller-manager")?;
        args.extend([
            "--controllers=namespace-controller,garbage-collector-controller,\
             serviceaccount-controller,deployment-controller,replicaset-controller,\
             disruption-controller,root-ca-certificate-publisher-controller"
                .into(),
            "--use-service-account-credentials=false".into(),
            "--concurrent-gc-syncs=5".into(),
        ]);
        cp.controller_manager = Some(Supervised::spawn(
            "kube-controller-manager",
            &binary("kube-controller-manager")?,
            &args,
            &dir.join("kube-controller-manager.log"),
        )?);
        cp.wait_controller_manager().await?;
        cp.scheduler = Some(Supervised::spawn(
            "kube-scheduler",
            &binary("kube-scheduler")?,
            &cp.component_args("scheduler")?,
            &dir.join("kube-scheduler.log"),
        )?);
        Ok(cp)
    }

    /// The flags kube-controller-manager and kube-scheduler share: the admin kubeconfig for
    /// everything, their own serving certificate on a free loopback port, no leader
    /// election.
    fn component_args(&self, name: &str) -> Result<Vec<String>> {
        let kubeconfig = self.kubeconfig_path().display().to_string();
        Ok(vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()?),
            format!(
                "--cert-dir={}",
                self.dir.join(format!("{name}-certs")).display()
            ),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            "--v=0".into(),
        ])
    }

    /// Waits until kube-controller-manager runs its controllers: its serviceaccount
    /// controller has created the `default` ServiceAccount.
    async fn wait_controller_manager(&mut self) -> Result<()> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let client = self.client().await?;
        let accounts = kube::Api::<ServiceAccount>::namespaced(client, "default");
        let manager = &mut self.controller_manager;
        let ran = crate::poll_until("a controller", READY_TIMEOUT, POLL, || {
            let alive = manager
                .as_mut()
                .map_or(Ok(()), |p| p.ensure_running("starting up"));
            let accounts = accounts.clone();
            async move {
                alive?;
                Ok(match accounts.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("no default ServiceAccount".to_owned()),
                    Err(e) => Err(e.to_string()),
                })
            }
        })
        .await;
        ran.map_err(|e| match e {
            Error::Timeout(_) => Error::Start {
                service: "kube-controller-manager".into(),
                reason: format!("no controller ran within {READY_TIMEOUT:?}"),
                log_tail: crate::process::tail(&self.dir.join("kube-controller-manager.log"), 30),
            },
            other => other,
        })
    }

    /// The apiserver's URL.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// A kubeconfig file with admin (`system:masters`) credentials for this control plane.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A kube client with admin credentials.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig_path()).await
    }

    /// Freezes kube-apiserver (SIGSTOP): requests hang, as with a wedged or partitioned
    /// apiserver, until [`Self::thaw_apiserver`].
    pub fn freeze_apiserver(&self) {
        if let Some(p) = &self.apiserver {
            p.signal(nix::sys::signal::Signal::SIGSTOP);
        }
    }

    /// Thaws a frozen kube-apiserver (SIGCONT).
    pub fn thaw_apiserver(&self) {
        if let Some(p) = &self.apiserver {
            p.signal(nix::sys::signal::Signal::SIGCONT);
        }
    }

    /// The process ids of every running component.
    pub fn pids(&self) -> Vec<u32> {
        [
            &self.etcd,
            &self.apiserver,
            &self.controller_manager,
            &self.scheduler,
        ]
        .into_iter()
        .flatten()
        .filter_map(Supervised::pid)
        .collect()
    }

    /// The log files of every component, for a failing test's report.
    pub fn logs(&self) -> Vec<PathBuf> {
        [
            "etcd.log",
            "kube-apiserver.log",
            "kube-controller-manager.log",
            "kube-scheduler.log",
        ]
        .iter()
        .map(|f| self.dir.join(f))
        .collect()
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = self.client().await?;
        let (etcd, apiserver) = (&mut self.etcd, &mut self.apiserver);
        let ready = crate::poll_until("the apiserver's /readyz", READY_TIMEOUT, POLL, || {
            let alive = [etcd.as_mut(), apiserver.as_mut()]
                .into_iter()
                .flatten()
                .try_for_each(|p| p.ensure_running("starting up"));
            let client = client.clone();
            async move {
                alive?;
                let req = http::Request::get("/readyz")
                    .body(Vec::new())
                    .map_err(|e| Error::Kube(e.to_string()))?;
                Ok(match client.request_text(req).await {
                    Ok(body) if body.trim() == "ok" => Ok(()),
                    Ok(body) => Err(body),
                    Err(e) => Err(e.to_string()),
                })
            }
        })
        .await;
        ready.map_err(|e| match e {
            Error::Timeout(_) => Error::Start {
                service: "kube-apiserver".into(),
                reason: format!("not ready after {READY_TIMEOUT:?}"),
                log_tail: crate::process::tail(&self.dir.join("kube-apiserver.log"), 30),
            },
            other => other,
        })
    }
}

/// A kube client for the kubeconfig at `path`. A client lives on the runtime that built it:
/// a thread with a runtime of its own builds its own.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .map_err(|e| Error::Kube(format!("reading the kubeconfig: {e}")))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kube(format!("loading the kubeconfig: {e}")))?;
    kube::Client::try_from(config).map_err(|e| Error::Kube(format!("building a client: {e}")))
}

/// The control plane's certificates: a CA, the apiserver's serving certificate, an admin
/// client certificate in `system:masters`, and the service-account signing key.
struct Pki {
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

impl Pki {
    fn write(dir: &Path) -> Result<Self> {
        let err = |e: rcgen::Error| Error::Pki(e.to_string());
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "weir-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().map_err(err)?;
        let mut server_params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])
        .map_err(err)?;
        server_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &issuer).map_err(err)?;

        let admin_key = KeyPair::generate().map_err(err)?;
        let mut admin_params = CertificateParams::default();
        admin_params
            .distinguished_name
            .push(DnType::CommonName, "weir-admin");
        admin_params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin_params.signed_by(&admin_key, &issuer).map_err(err)?;

        let sa_key = KeyPair::generate().map_err(err)?;

        let files = [
            ("ca.crt", ca_pem.clone()),
            ("apiserver.crt", server_cert.pem()),
            ("apiserver.key", server_key.serialize_pem()),
            ("sa.key", sa_key.serialize_pem()),
            ("sa.pub", sa_key.public_key_pem()),
        ];
        for (name, pem) in files {
            let path = dir.join(name);
            std::fs::write(&path, pem)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        Ok(Self {
            ca_pem,
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
        })
    }

    fn write_kubeconfig(&self, path: &Path, port: u16) -> Result<()> {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = format!(
            "\
apiVersion: v1
kind: Config
clusters:
- name: weir-local
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority-data: {ca}
users:
- name: weir-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: weir-local
  context:
    cluster: weir-local
    user: weir-admin
    namespace: default
current-context: weir-local
",
            ca = b64(&self.ca_pem),
            cert = b64(&self.admin_cert_pem),
            key = b64(&self.admin_key_pem),
        );
        std::fs::write(path, text).map_err(|e| Error::io("writing the kubeconfig", e))
    }
}
