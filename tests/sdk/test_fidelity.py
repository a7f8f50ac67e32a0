"""Where the emulator once departed from the API reference (issue 15), and strict DER (issue 10,
item 5), checked through the official SDKs on a fresh emulator seeded with the demo state.

- A root CA's `key_usages` are ignored (the fixed root usages apply), not refused.
- `customized_extension` ends up in the issued certificate, non-critical.
- `export_certificate` with `type` IIS / TOMCAT and `is_compressed` "true" answers a zip with
  `keystorePass.txt` and `server.pfx` / `server.jks`, opened here with that password: the PFX by
  Python `cryptography` (OpenSSL), the JKS by a reader written from the format's description
  (and by Java's keytool when a JDK is installed).
- Every kind of certificate the emulator issues parses under a strict DER parser (Python
  `cryptography`, which refuses e.g. an encoded DEFAULT such as `cA FALSE`).
"""
import hashlib
import io
import os
import shutil
import struct
import subprocess
import tempfile
import uuid
import zipfile

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtensionOID, NameOID
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkccm.v1 import CcmClient
from huaweicloudsdkccm.v1.model import (
    CertDistinguishedName,
    CreateCertificateAuthorityRequest,
    CreateCertificateAuthorityRequestBody,
    CreateCertificateByCsrRequest,
    CreateCertificateByCsrRequestBody,
    CreateCertificateRequest,
    CreateCertificateRequestBody,
    CustomizedExtension,
    DistinguishedName,
    ExportCertificateAuthorityCertificateRequest,
    ExportCertificateRequest,
    ExportCertificateRequestBody,
    ListCertificateAuthorityRequest,
    ListCertificateRequest,
    Validity,
)
from huaweicloudsdkscm.v3 import ExportCertificateRequest as ScmExportCertificateRequest
from huaweicloudsdkscm.v3 import ListCertificatesRequest, ScmClient

from conftest import AK, DOMAIN_ID, SK, _binary


@pytest.fixture(scope="module")
def demo():
    """A fresh emulator with the demo seed (PCA CAs and certificates, SCM certificates)."""
    proc = subprocess.Popen(
        [_binary(), "emulator", "--listen", "127.0.0.1:0", "--seed", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"emulator did not start (first line: {url!r})")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _http_config():
    from huaweicloudsdkcore.http.http_config import HttpConfig

    config = HttpConfig.get_default_config()
    config.retry_times = 0
    config.timeout = (5, 120)
    return config


@pytest.fixture(scope="module")
def ccm(demo):
    from huaweicloudsdkcore.auth.credentials import GlobalCredentials

    return (
        CcmClient.new_builder()
        .with_credentials(GlobalCredentials(AK, SK, DOMAIN_ID))
        .with_endpoints([demo])
        .with_http_config(_http_config())
        .build()
    )


@pytest.fixture(scope="module")
def scm(demo):
    from huaweicloudsdkcore.auth.credentials import GlobalCredentials

    return (
        ScmClient.new_builder()
        .with_credentials(GlobalCredentials(AK, SK, DOMAIN_ID))
        .with_endpoints([demo])
        .with_http_config(_http_config())
        .build()
    )


def _dn(cn):
    return DistinguishedName(
        common_name=cn, country="CN", state="Sichuan", locality="Chengdu",
        organization="SDK Org", organizational_unit="PKI",
    )


def _create_ca(ccm, ca_type, cn, issuer=None, key_usages=None, path_length=None):
    body = CreateCertificateAuthorityRequestBody(
        type=ca_type,
        distinguished_name=_dn(cn),
        key_algorithm="EC256",
        signature_algorithm="SHA256",
        validity=Validity(type="YEAR", value=5 if issuer else 10),
        issuer_id=issuer,
        key_usages=key_usages,
        path_length=path_length,
    )
    return ccm.create_certificate_authority(CreateCertificateAuthorityRequest(body=body)).ca_id


def _ca_pem(ccm, ca_id):
    return ccm.export_certificate_authority_certificate(
        ExportCertificateAuthorityCertificateRequest(ca_id=ca_id)
    )


@pytest.fixture(scope="module")
def cas(ccm):
    """A root (path length 1) and an active subordinate (path length 0) made through the SDK."""
    tag = uuid.uuid4().hex[:8]
    root = _create_ca(ccm, "ROOT", f"Fidelity Root {tag}")
    sub = _create_ca(ccm, "SUBORDINATE", f"Fidelity Sub {tag}", issuer=root, path_length=0)
    return {"root": root, "sub": sub}


def _apply(ccm, issuer, cn, key_algorithm="EC256", custom=None):
    body = CreateCertificateRequestBody(
        issuer_id=issuer,
        key_algorithm=key_algorithm,
        signature_algorithm="SHA256",
        distinguished_name=CertDistinguishedName(common_name=cn),
        validity=Validity(type="DAY", value=30),
        customized_extension=custom,
    )
    return ccm.create_certificate(CreateCertificateRequest(body=body)).certificate_id


def _export(ccm, cert_id, kind, compressed):
    return ccm.export_certificate(
        ExportCertificateRequest(
            certificate_id=cert_id,
            body=ExportCertificateRequestBody(is_compressed=compressed, type=kind),
        )
    )


def _pems(text):
    """The certificates in a PEM bundle (any line endings), each parsed strictly."""
    text = text.replace("\r\n", "\n")
    out = []
    for block in text.split("-----END CERTIFICATE-----"):
        if "-----BEGIN CERTIFICATE-----" in block:
            out.append(_strict(block.strip() + "\n-----END CERTIFICATE-----\n"))
    assert out, f"no certificate in {text!r}"
    return out


def _strict(pem):
    """Parse a certificate and every part of it, so that any DER violation surfaces here."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    # cryptography parses lazily: touch each field and every extension.
    cert.subject, cert.issuer, cert.serial_number, cert.signature_hash_algorithm
    cert.not_valid_before_utc, cert.not_valid_after_utc, cert.public_key()
    for ext in cert.extensions:
        ext.value
    # Re-encoding gives the same bytes only when the input was DER.
    der = cert.public_bytes(serialization.Encoding.DER)
    assert x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.DER) == der
    return cert


# ---- 1. a root CA's key usages are ignored ----


def test_root_ca_key_usages_are_ignored(ccm):
    tag = uuid.uuid4().hex[:8]
    root = _create_ca(ccm, "ROOT", f"Ignored KU Root {tag}", key_usages=["keyEncipherment"])
    cert = _pems(_ca_pem(ccm, root).certificate)[0]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.key_encipherment
    # The keyCertSign rule stays for a subordinate, whose usages can be customised.
    with pytest.raises(ClientRequestException) as e:
        _create_ca(ccm, "SUBORDINATE", f"Bad KU Sub {tag}", issuer=root,
                   key_usages=["keyEncipherment"])
    assert (e.value.status_code, e.value.error_code) == (400, "PCA.00020001")


# ---- 2. customized_extension is in the certificate ----


def test_customized_extension_is_in_the_certificate(ccm, cas):
    oid, value = "1.3.6.1.4.1.2011.4.1", "This is custom extensions."
    cert_id = _apply(ccm, cas["sub"], "custom-ext.sdk.example.com",
                     custom=CustomizedExtension(object_identifier=oid, value=value))
    cert = _pems(_export(ccm, cert_id, "OTHER", "false").certificate)[0]
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    assert not ext.critical
    # The value as an ASN.1 UTF8String (tag 12) inside the extension's OCTET STRING.
    raw = value.encode()
    assert ext.value.value == bytes([0x0C, len(raw)]) + raw
    text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=cert.public_bytes(
        serialization.Encoding.PEM), capture_output=True, check=True).stdout.decode()
    assert f"{oid}:" in text and value in text

    # An OID that is not dot-decimal ASN.1 (first arc 0..2, second < 40 under 0 and 1) is refused.
    for bad in ("1.40.5", "3.1", "1", "1.2.x"):
        with pytest.raises(ClientRequestException) as e:
            _apply(ccm, cas["sub"], "bad-ext.sdk.example.com",
                   custom=CustomizedExtension(object_identifier=bad, value="v"))
        assert (e.value.status_code, e.value.error_code) == (400, "PCA.00020001"), bad


# ---- 3. IIS: keystorePass.txt + server.pfx ----


def _zip(resp):
    raw = resp.raw_content
    assert raw[:2] == b"PK"
    files = zipfile.ZipFile(io.BytesIO(raw))
    return {n: files.read(n) for n in files.namelist()}


def _same_public_key(key, cert):
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


@pytest.mark.parametrize("key_algorithm", ["EC256", "RSA2048"])
def test_iis_export_is_a_pfx(ccm, cas, key_algorithm):
    cn = f"iis-{key_algorithm.lower()}.sdk.example.com"
    cert_id = _apply(ccm, cas["sub"], cn, key_algorithm=key_algorithm)
    pem = _export(ccm, cert_id, "OTHER", "false")
    leaf, chain = _pems(pem.certificate)[0], _pems(pem.certificate_chain)
    files = _zip(_export(ccm, cert_id, "IIS", "true"))
    assert sorted(files) == ["keystorePass.txt", "server.pfx"]
    password = files["keystorePass.txt"]
    assert len(password) >= 16 and password.isalnum(), "a printable, typeable password"
    key, cert, extra = pkcs12.load_key_and_certificates(files["server.pfx"], password)
    assert cert == leaf and _same_public_key(key, cert)
    assert extra == chain
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(files["server.pfx"], b"wrong" + password)
    # Each export draws a new password.
    again = _zip(_export(ccm, cert_id, "IIS", "true"))
    assert again["keystorePass.txt"] != password


# ---- 4. TOMCAT: keystorePass.txt + server.jks ----


class Jks:
    """A Java KeyStore read from its documented layout (Sun JKS, version 2): magic 0xFEEDFEED,
    version, entry count, entries, then SHA-1(password UTF-16BE + "Mighty Aphrodite" + body).
    A private-key entry holds an EncryptedPrivateKeyInfo with Sun's key protector
    (OID 1.3.6.1.4.1.42.2.17.1.1): salt(20) + key XOR keystream + SHA-1(password + key), the
    keystream being SHA-1(password + previous block) from the salt on."""

    KEY_PROTECTOR_OID = bytes.fromhex("060a2b060104012a02110101")

    def __init__(self, data, password):
        self.data, self.pos = data, 0
        pw = password.encode("utf-16-be")
        body, mac = data[:-20], data[-20:]
        assert hashlib.sha1(pw + b"Mighty Aphrodite" + body).digest() == mac, "integrity"
        magic, version, count = self._unpack(">III")
        assert (magic, version) == (0xFEEDFEED, 2)
        self.entries = []
        for _ in range(count):
            (tag,) = self._unpack(">I")
            alias = self._utf()
            (created_ms,) = self._unpack(">q")
            assert tag == 1, "a private-key entry"
            protected = self._bytes()
            certs = []
            (n,) = self._unpack(">I")
            for _ in range(n):
                assert self._utf() == "X.509"
                certs.append(x509.load_der_x509_certificate(self._bytes()))
            self.entries.append((alias, created_ms, self._unprotect(protected, pw), certs))
        assert self.pos == len(body), "nothing after the entries but the digest"

    def _unpack(self, fmt):
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def _bytes(self):
        (n,) = self._unpack(">I")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def _utf(self):
        (n,) = self._unpack(">H")
        out = self.data[self.pos:self.pos + n].decode("ascii")
        self.pos += n
        return out

    def _unprotect(self, epki, pw):
        # SEQUENCE { SEQUENCE { OID, NULL }, OCTET STRING }, lengths read from DER.
        def tlv(buf, tag):
            assert buf[0] == tag, (hex(buf[0]), hex(tag))
            n, off = buf[1], 2
            if n & 0x80:
                k = n & 0x7F
                n, off = int.from_bytes(buf[2:2 + k], "big"), 2 + k
            return buf[off:off + n], buf[off + n:]

        seq, rest = tlv(epki, 0x30)
        assert rest == b""
        alg, rest = tlv(seq, 0x30)
        assert alg == self.KEY_PROTECTOR_OID + b"\x05\x00"
        protected, rest = tlv(rest, 0x04)
        assert rest == b""
        salt, enc, check = protected[:20], protected[20:-20], protected[-20:]
        stream, block = b"", salt
        while len(stream) < len(enc):
            block = hashlib.sha1(pw + block).digest()
            stream += block
        key = bytes(a ^ b for a, b in zip(enc, stream))
        assert hashlib.sha1(pw + key).digest() == check, "key check digest"
        return serialization.load_der_private_key(key, password=None)


@pytest.mark.parametrize("key_algorithm", ["EC256", "RSA2048"])
def test_tomcat_export_is_a_jks(ccm, cas, key_algorithm, tmp_path):
    cn = f"tomcat-{key_algorithm.lower()}.sdk.example.com"
    cert_id = _apply(ccm, cas["sub"], cn, key_algorithm=key_algorithm)
    pem = _export(ccm, cert_id, "OTHER", "false")
    leaf, chain = _pems(pem.certificate)[0], _pems(pem.certificate_chain)
    files = _zip(_export(ccm, cert_id, "TOMCAT", "true"))
    assert sorted(files) == ["keystorePass.txt", "server.jks"]
    password = files["keystorePass.txt"].decode()
    assert len(password) >= 16 and password.isalnum()
    jks = Jks(files["server.jks"], password)
    [(alias, created_ms, key, certs)] = jks.entries
    assert alias == cn and created_ms > 0
    assert certs == [leaf, *chain] and _same_public_key(key, leaf)
    with pytest.raises(AssertionError, match="integrity"):
        Jks(files["server.jks"], password + "x")

    if shutil.which("keytool") is None:
        # CI installs a Java runtime (.ci/run): there a missing keytool is a failure.
        assert os.environ.get("CI") != "true", "keytool is missing on CI"
        pytest.skip("no keytool (install a Java runtime: .ci/run does) to open the JKS with Java")
    store = tmp_path / "server.jks"
    store.write_bytes(files["server.jks"])
    out = subprocess.run(
        ["keytool", "-list", "-v", "-storetype", "JKS", "-keystore", str(store),
         "-storepass", password],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Keystore type: JKS" in out.stdout or "Keystore type: jks" in out.stdout
    assert f"Alias name: {cn}" in out.stdout
    assert "Entry type: PrivateKeyEntry" in out.stdout
    assert f"Certificate chain length: {1 + len(chain)}" in out.stdout
    # Java decrypts the key too: convert to PKCS#12 and compare the key with the certificate.
    p12 = tmp_path / "server.p12"
    out = subprocess.run(
        ["keytool", "-importkeystore", "-srckeystore", str(store), "-srcstoretype", "JKS",
         "-srcstorepass", password, "-destkeystore", str(p12), "-deststoretype", "PKCS12",
         "-deststorepass", password, "-noprompt"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    key, cert, _ = pkcs12.load_key_and_certificates(p12.read_bytes(), password.encode())
    assert cert == leaf and _same_public_key(key, leaf)


def test_iis_and_tomcat_stay_undefined_uncompressed(ccm, cas):
    cert_id = _apply(ccm, cas["sub"], "json.sdk.example.com")
    for kind in ("IIS", "TOMCAT"):
        with pytest.raises(ClientRequestException) as e:
            _export(ccm, cert_id, kind, "false")
        assert (e.value.status_code, e.value.error_code) == (400, "PCA.00020001"), kind


def test_keystore_packages_need_the_key(ccm, cas):
    """A certificate issued from a CSR has no key in the service: no keystore can be built."""
    cert_id = ccm.create_certificate_by_csr(CreateCertificateByCsrRequest(
        body=CreateCertificateByCsrRequestBody(
            issuer_id=cas["sub"], csr=_csr("csr-keystore.sdk.example.com"),
            validity=Validity(type="DAY", value=10), type="ENTITY_CERT"))).certificate_id
    for kind in ("IIS", "TOMCAT"):
        with pytest.raises(ClientRequestException) as e:
            _export(ccm, cert_id, kind, "true")
        assert (e.value.status_code, e.value.error_code) == (400, "PCA.00020001"), kind
        assert "CSR" in e.value.error_msg
    assert sorted(_zip(_export(ccm, cert_id, "OTHER", "true"))) == ["chain.pem", "server.pem"]


# ---- strict DER for every kind of certificate the emulator issues ----


def _csr(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_every_issued_certificate_is_strict_der(ccm, scm, cas):
    seen = {}

    # CAs: the demo root and subordinate, and the SDK-made ones.
    cas_listed = ccm.list_certificate_authority(ListCertificateAuthorityRequest(limit=100))
    for ca in cas_listed.certificate_authorities:
        if ca.status in ("ACTIVED", "EXPIRED"):
            exp = _ca_pem(ccm, ca.ca_id)
            seen[f"CA {ca.distinguished_name.common_name}"] = _pems(exp.certificate)
            _pems(exp.certificate_chain)
    assert any("demo root" in k for k in seen) and any("demo issuing" in k for k in seen)

    # Leaves: applied (EC and RSA), the PCA demo ones, and issued from a CSR.
    for alg in ("EC256", "RSA2048"):
        cert_id = _apply(ccm, cas["sub"], f"der-{alg.lower()}.sdk.example.com", key_algorithm=alg)
        seen[f"leaf {alg}"] = _pems(_export(ccm, cert_id, "NGINX", "false").certificate)
    listed = ccm.list_certificate(ListCertificateRequest(status="ISSUED", limit=1000))
    demo = [c for c in listed.certificates if c.distinguished_name.common_name.endswith(".demo.internal")]
    assert demo, "the demo seed issues private certificates"
    for c in demo:
        seen[f"demo {c.distinguished_name.common_name}"] = _pems(
            _export(ccm, c.certificate_id, "NGINX", "false").certificate)
    entity = ccm.create_certificate_by_csr(CreateCertificateByCsrRequest(
        body=CreateCertificateByCsrRequestBody(
            issuer_id=cas["sub"], csr=_csr("csr-leaf.sdk.example.com"),
            validity=Validity(type="DAY", value=10), type="ENTITY_CERT"))).certificate_id
    seen["CSR leaf"] = _pems(_export(ccm, entity, "OTHER", "false").certificate)
    intermediate = ccm.create_certificate_by_csr(CreateCertificateByCsrRequest(
        body=CreateCertificateByCsrRequestBody(
            issuer_id=cas["root"], csr=_csr("CSR Intermediate"),
            validity=Validity(type="YEAR", value=1), type="INTERMEDIATE_CA",
            path_length=0))).certificate_id
    seen["CSR intermediate"] = _pems(_ca_pem(ccm, intermediate).certificate)

    # SCM: every demo certificate, with its chain.
    page = scm.list_certificates(ListCertificatesRequest(limit=50, status="ALL"))
    assert page.certificates, "the demo seed imports SCM certificates"
    for c in page.certificates:
        exp = scm.export_certificate(ScmExportCertificateRequest(certificate_id=c.id))
        seen[f"SCM {c.name}"] = _pems(exp.certificate)
        if exp.certificate_chain:
            _pems(exp.certificate_chain)

    leaf = seen["leaf EC256"][0]
    bc = leaf.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and bc.value.ca is False and bc.value.path_length is None
    # The subject key identifier stays: SHA-256 of the SubjectPublicKeyInfo, cut to 20 bytes.
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ski.value.digest == hashlib.sha256(spki).digest()[:20]
