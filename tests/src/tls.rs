//! Test certificates, made with the openssl command (Debian package openssl): a CA of the
//! test's own and a server certificate it signed, for HTTPS servers the tests run.

use std::path::{Path, PathBuf};

/// The files [`test_certificate`] wrote in its directory.
pub struct TestCertificate {
    /// The CA, to trust (`outbound.extra_ca_file`, [`crate::trust_ca`], `SSL_CERT_FILE`).
    pub ca: PathBuf,
    /// The server's certificate and its key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A new CA in `dir` (`ca.pem`) and a P-256 server certificate `{name}.pem` (key `{name}.key`)
/// for `subject_alt_names` (`DNS:host`, `IP:127.0.0.1`), valid for a day.
pub fn test_certificate(dir: &Path, name: &str, subject_alt_names: &[&str]) -> TestCertificate {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=warden e2e CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ]
        .concat(),
    );
    let (key, csr, cert, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            subject_alt_names.join(",")
        ),
    )
    .expect("write the certificate's extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "1",
        "-extfile",
        &ext,
    ]);
    TestCertificate {
        ca: dir.join("ca.pem"),
        cert: dir.join(cert),
        key: dir.join(key),
    }
}
