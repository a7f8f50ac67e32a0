"""The official huaweicloudsdkccm v1 client drives every private-certificate operation against the
emulator, and the answers decode into the SDK's models.

CAs are needed first. When the emulator serves the create-CA route (the CA half), they are made
through the SDK; otherwise a root and a subordinate CA are made with the openssl CLI and put into
the emulator's state file before it starts, so the certificate operations are still exercised.
"""
import base64
import datetime
import io
import json
import os
import subprocess
import tempfile
import time
import zipfile

import pytest

from conftest import AK, DOMAIN_ID, SK, _binary

from huaweicloudsdkccm.v1 import CcmClient
from huaweicloudsdkccm.v1.model import (
    CertDistinguishedName,
    CreateCertificateByCsrRequest,
    CreateCertificateByCsrRequestBody,
    CreateCertificateRequest,
    CreateCertificateRequestBody,
    CustomizedExtension,
    DeleteCertificateRequest,
    ExportCertificateRequest,
    ExportCertificateRequestBody,
    ExtendedKeyUsage,
    ListCertificateRequest,
    ParseCertificateSigningRequestRequest,
    ParseCertificateSigningRequestRequestBody,
    RevokeCertificateRequest,
    RevokeCertificateRequestBody,
    ShowCertificateQuotaRequest,
    ShowCertificateRequest,
    SubjectAlternativeName,
    Validity,
)
from huaweicloudsdkcore.exceptions import exceptions


def _openssl(*args, cwd):
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {out.stderr}")
    return out.stdout


def _cert_time_ms(path, which, cwd):
    line = _openssl("x509", "-in", path, "-noout", f"-{which}", cwd=cwd).strip()
    stamp = line.split("=", 1)[1]
    dt = datetime.datetime.strptime(stamp, "%b %d %H:%M:%S %Y %Z").replace(
        tzinfo=datetime.timezone.utc
    )
    return int(dt.timestamp()) * 1000


def _make_cas_with_openssl(d):
    """A root (path length 2) and a subordinate (path length 0) CA, EC P-256, as CaRecords."""
    with open(os.path.join(d, "ca.ext"), "w") as f:
        f.write(
            "[root]\nbasicConstraints=critical,CA:TRUE,pathlen:2\n"
            "keyUsage=critical,digitalSignature,keyCertSign,cRLSign\n"
            "subjectKeyIdentifier=hash\n"
            "[sub]\nbasicConstraints=critical,CA:TRUE,pathlen:0\n"
            "keyUsage=critical,digitalSignature,keyCertSign,cRLSign\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
    for name in ("root", "sub"):
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", f"{name}.key", cwd=d)
    _openssl("req", "-new", "-key", "root.key", "-subj", "/C=CN/O=SDK Org/CN=SDK Root CA",
             "-out", "root.csr", cwd=d)
    _openssl("x509", "-req", "-in", "root.csr", "-signkey", "root.key", "-days", "3650",
             "-sha256", "-extfile", "ca.ext", "-extensions", "root", "-out", "root.pem", cwd=d)
    _openssl("req", "-new", "-key", "sub.key", "-subj", "/C=CN/O=SDK Org/CN=SDK Sub CA",
             "-out", "sub.csr", cwd=d)
    _openssl("x509", "-req", "-in", "sub.csr", "-CA", "root.pem", "-CAkey", "root.key",
             "-CAcreateserial", "-days", "1825", "-sha256", "-extfile", "ca.ext",
             "-extensions", "sub", "-out", "sub.pem", cwd=d)
    import uuid

    root_id, sub_id = str(uuid.uuid4()), str(uuid.uuid4())

    def record(ca_id, name, ca_type, issuer, path_length, chain):
        return {
            "id": ca_id,
            "ca_type": ca_type,
            "status": "ACTIVED",
            "distinguished_name": {
                "common_name": f"SDK {name.capitalize()} CA",
                "country": "CN",
                "organization": "SDK Org",
            },
            "key_algorithm": "EC256",
            "signature_algorithm": "SHA256",
            "key_pem": open(os.path.join(d, f"{name}.key")).read(),
            "certificate_pem": open(os.path.join(d, f"{name}.pem")).read(),
            "chain_pem": chain,
            "issuer_id": issuer,
            "path_length": path_length,
            "not_before": _cert_time_ms(f"{name}.pem", "startdate", d),
            "not_after": _cert_time_ms(f"{name}.pem", "enddate", d),
        }

    root_pem = open(os.path.join(d, "root.pem")).read()
    return root_id, sub_id, {
        root_id: record(root_id, "root", "ROOT", None, 2, ""),
        sub_id: record(sub_id, "sub", "SUBORDINATE", root_id, 0, root_pem),
    }, root_pem


def _start(state_file):
    proc = subprocess.Popen(
        [_binary(), "emulator", "--listen", "127.0.0.1:0", "--state-file", state_file],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"emulator did not start (first line: {url!r})")
    return proc, url


def _stop(proc):
    proc.terminate()
    proc.wait(timeout=10)


def _client(url, http_config):
    from huaweicloudsdkcore.auth.credentials import GlobalCredentials

    return (
        CcmClient.new_builder()
        .with_credentials(GlobalCredentials(AK, SK, DOMAIN_ID))
        .with_endpoints([url])
        .with_http_config(http_config)
        .build()
    )


def _try_sdk_cas(client):
    """Create a root and a subordinate CA through the SDK; None when the route is missing."""
    from huaweicloudsdkccm.v1.model import (
        CreateCertificateAuthorityRequest,
        CreateCertificateAuthorityRequestBody,
        DistinguishedName,
        ExportCertificateAuthorityCertificateRequest,
        ShowCertificateAuthorityRequest,
    )

    def create(ca_type, cn, issuer=None, path_length=None, years=5):
        body = CreateCertificateAuthorityRequestBody(
            type=ca_type,
            distinguished_name=DistinguishedName(
                common_name=cn, country="CN", state="Sichuan", locality="Chengdu",
                organization="SDK Org", organizational_unit="PKI",
            ),
            key_algorithm="EC256",
            validity=Validity(type="YEAR", value=years),
            signature_algorithm="SHA256",
            issuer_id=issuer,
            path_length=path_length,
        )
        return client.create_certificate_authority(
            CreateCertificateAuthorityRequest(body=body)
        ).ca_id

    try:
        root = create("ROOT", "SDK Root CA", path_length=2, years=10)
    except exceptions.ClientRequestException as e:
        if e.status_code == 404 and e.error_code == "APIGW.0101":
            return None
        raise
    sub = create("SUBORDINATE", "SDK Sub CA", issuer=root, path_length=0, years=5)
    status = client.show_certificate_authority(
        ShowCertificateAuthorityRequest(ca_id=sub)
    ).status
    if status != "ACTIVED":
        pytest.skip(f"the SDK-created subordinate CA is {status}, not ACTIVED")
    root_pem = client.export_certificate_authority_certificate(
        ExportCertificateAuthorityCertificateRequest(ca_id=root)
    ).certificate
    return root, sub, root_pem


@pytest.fixture(scope="module")
def pca():
    from huaweicloudsdkcore.http.http_config import HttpConfig

    http_config = HttpConfig.get_default_config()
    http_config.retry_times = 0
    http_config.timeout = (5, 60)
    d = tempfile.mkdtemp(prefix="pca-cert-sdk-")
    state_file = os.path.join(d, "state.json")
    proc, url = _start(state_file)
    client = _client(url, http_config)
    made = _try_sdk_cas(client)
    source = "sdk"
    if made is None:
        # No create-CA route yet: inject openssl-made CAs into the saved state and restart.
        source = "openssl"
        _stop(proc)
        root_id, sub_id, records, root_pem = _make_cas_with_openssl(d)
        with open(state_file) as f:
            state = json.load(f)
        state["pca"]["cas"].update(records)
        with open(state_file, "w") as f:
            json.dump(state, f)
        proc, url = _start(state_file)
        client = _client(url, http_config)
    else:
        root_id, sub_id, root_pem = made
    with open(os.path.join(d, "root-ca.pem"), "w") as f:
        f.write(root_pem.replace("\r\n", "\n"))
    yield {
        "client": client,
        "root": root_id,
        "sub": sub_id,
        "dir": d,
        "root_pem_path": os.path.join(d, "root-ca.pem"),
        "ca_source": source,
    }
    _stop(proc)


def _apply(client, issuer, cn, **kw):
    body = CreateCertificateRequestBody(
        issuer_id=issuer,
        key_algorithm=kw.get("key_algorithm", "EC256"),
        signature_algorithm=kw.get("signature_algorithm", "SHA256"),
        distinguished_name=CertDistinguishedName(common_name=cn, organizational_unit="Web"),
        validity=kw.get("validity", Validity(type="DAY", value=30)),
        key_usages=kw.get("key_usages"),
        subject_alternative_names=kw.get("sans"),
        extended_key_usage=kw.get("eku"),
        customized_extension=kw.get("custom"),
    )
    return client.create_certificate(CreateCertificateRequest(body=body)).certificate_id


def _export(client, cert_id, kind="NGINX", compressed="false"):
    return client.export_certificate(
        ExportCertificateRequest(
            certificate_id=cert_id,
            body=ExportCertificateRequestBody(is_compressed=compressed, type=kind),
        )
    )


def _write(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def _pubkey_of_cert(path, d):
    return _openssl("x509", "-in", path, "-noout", "-pubkey", cwd=d)


def test_apply_show_export_verify(pca):
    c = pca["client"]
    sans = [
        SubjectAlternativeName(type="DNS", value="sdk.example.com"),
        SubjectAlternativeName(type="IP", value="10.0.0.7"),
        SubjectAlternativeName(type="EMAIL", value="pki@example.com"),
        SubjectAlternativeName(type="URI", value="https://sdk.example.com/id"),
    ]
    cert_id = _apply(
        c, pca["sub"], "sdk.example.com",
        key_algorithm="RSA2048", signature_algorithm="SHA384",
        key_usages=["digitalSignature", "keyEncipherment"], sans=sans,
        eku=ExtendedKeyUsage(server_auth=True, client_auth=True),
        custom=CustomizedExtension(object_identifier="1.3.6.1.4.1.2011.4.1", value="x"),
    )
    assert len(cert_id) == 36

    shown = c.show_certificate(ShowCertificateRequest(certificate_id=cert_id))
    assert shown.certificate_id == cert_id
    assert shown.status == "ISSUED"
    assert shown.issuer_id == pca["sub"]
    assert shown.issuer_name == "SDK Sub CA"
    assert shown.key_algorithm == "RSA2048"
    assert shown.signature_algorithm == "SHA384"
    assert shown.gen_mode == "GENERATE"
    assert shown.freeze_flag == 0
    assert shown.distinguished_name.common_name == "sdk.example.com"
    assert shown.distinguished_name.organizational_unit == "Web"
    # Inherited from the issuing CA.
    assert shown.distinguished_name.organization == "SDK Org"
    assert shown.distinguished_name.country == "CN"
    assert shown.not_after - shown.not_before == 30 * 86400 * 1000
    assert shown.create_time > 0

    exp = _export(c, cert_id, "NGINX")
    assert exp.certificate.startswith("-----BEGIN CERTIFICATE-----\r\n")
    assert "BEGIN RSA PRIVATE KEY" in exp.private_key
    d = tempfile.mkdtemp(dir=pca["dir"])
    cert = _write(d, "cert.pem", exp.certificate)
    chain = _write(d, "chain.pem", exp.certificate_chain)
    key = _write(d, "key.pem", exp.private_key)
    _openssl("verify", "-CAfile", pca["root_pem_path"], "-untrusted", chain, cert, cwd=d)
    assert _pubkey_of_cert(cert, d) == _openssl("pkey", "-in", key, "-pubout", cwd=d)
    text = _openssl("x509", "-in", cert, "-noout", "-text", cwd=d)
    for needle in ("DNS:sdk.example.com", "IP Address:10.0.0.7", "email:pki@example.com",
                   "URI:https://sdk.example.com/id", "TLS Web Server Authentication",
                   "TLS Web Client Authentication", "Key Encipherment", "ecdsa-with-SHA384",
                   "Public-Key: (2048 bit)"):
        assert needle in text, needle
    serial = _openssl("x509", "-in", cert, "-noout", "-serial", cwd=d).strip().split("=")[1]
    assert serial == shown.serial_number


def test_list_filters_sorting_and_pages(pca):
    c = pca["client"]
    ids = [_apply(c, pca["sub"], f"listed-{i}.sdk.example.com") for i in range(5)]
    page = c.list_certificate(ListCertificateRequest(
        name="listed-", sort_key="common_name", sort_dir="ASC", limit=2, offset=0))
    assert page.total == 5
    assert [x.distinguished_name.common_name for x in page.certificates] == [
        "listed-0.sdk.example.com", "listed-1.sdk.example.com"]
    seen = []
    offset = 0
    while True:
        page = c.list_certificate(ListCertificateRequest(
            name="listed-", sort_key="create_time", sort_dir="ASC", limit=2, offset=offset))
        seen += [x.certificate_id for x in page.certificates]
        offset += len(page.certificates)
        if len(page.certificates) < 2:
            break
    assert seen == ids
    issued = c.list_certificate(ListCertificateRequest(status="ISSUED", limit=1000))
    assert {x.certificate_id for x in issued.certificates} >= set(ids)
    for x in issued.certificates:
        assert isinstance(x.not_after, int) and x.gen_mode in ("GENERATE", "CSR")
    with pytest.raises(exceptions.ClientRequestException) as e:
        c.list_certificate(ListCertificateRequest(limit=1001))
    assert e.value.status_code == 400 and e.value.error_code == "PCA.00020001"


def test_csr_parse_and_issue(pca):
    c = pca["client"]
    d = tempfile.mkdtemp(dir=pca["dir"])
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384",
             "-out", "local.key", cwd=d)
    _openssl("req", "-new", "-key", "local.key", "-sha384",
             "-subj", "/C=DE/O=Local/CN=csr.sdk.example.com",
             "-addext", "subjectAltName=DNS:csr.sdk.example.com",
             "-out", "local.csr", cwd=d)
    csr = open(os.path.join(d, "local.csr")).read()

    parsed = c.parse_certificate_signing_request(ParseCertificateSigningRequestRequest(
        body=ParseCertificateSigningRequestRequestBody(csr=csr)))
    assert parsed.key_algorithm == "EC"
    assert parsed.key_algorithm_length == 384
    assert parsed.signature_algorithm == "SHA384withECDSA"
    assert parsed.distinguished_name.common_name == "csr.sdk.example.com"
    assert parsed.distinguished_name.country == "DE"
    local_pub = _openssl("pkey", "-in", "local.key", "-pubout", cwd=d)
    assert parsed.public_key.replace("\r\n", "\n") == local_pub

    cert_id = c.create_certificate_by_csr(CreateCertificateByCsrRequest(
        body=CreateCertificateByCsrRequestBody(
            issuer_id=pca["sub"], csr=csr, validity=Validity(type="MONTH", value=1),
            type="ENTITY_CERT"))).certificate_id
    shown = c.show_certificate(ShowCertificateRequest(certificate_id=cert_id))
    assert shown.gen_mode == "CSR"
    assert shown.key_algorithm == "EC384"
    assert shown.not_after - shown.not_before == 31 * 86400 * 1000
    exp = _export(c, cert_id, "OTHER")
    assert not exp.private_key
    cert = _write(d, "cert.pem", exp.certificate)
    chain = _write(d, "chain.pem", exp.certificate_chain)
    _openssl("verify", "-CAfile", pca["root_pem_path"], "-untrusted", chain, cert, cwd=d)
    assert _pubkey_of_cert(cert, d) == local_pub

    with pytest.raises(exceptions.ClientRequestException) as e:
        c.create_certificate_by_csr(CreateCertificateByCsrRequest(
            body=CreateCertificateByCsrRequestBody(
                issuer_id=pca["sub"], csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                "-----END CERTIFICATE REQUEST-----", validity=Validity(type="DAY", value=1))))
    assert e.value.status_code == 400 and e.value.error_code == "PCA.00020401"


def test_quota(pca):
    c = pca["client"]
    q = c.show_certificate_quota(ShowCertificateQuotaRequest())
    res = q.quotas.resources
    assert len(res) == 1 and res[0].type == "CERTIFICATE"
    assert res[0].quota == 100000
    before = res[0].used
    _apply(c, pca["sub"], "quota.sdk.example.com")
    q = c.show_certificate_quota(ShowCertificateQuotaRequest())
    assert q.quotas.resources[0].used == before + 1


def test_revoke_export_refused_delete(pca):
    c = pca["client"]
    cert_id = _apply(c, pca["sub"], "revoked.sdk.example.com")
    c.revoke_certificate(RevokeCertificateRequest(
        certificate_id=cert_id, body=RevokeCertificateRequestBody(reason="KEY_COMPROMISE")))
    assert c.show_certificate(ShowCertificateRequest(certificate_id=cert_id)).status == "REVOKED"
    with pytest.raises(exceptions.ClientRequestException) as e:
        _export(c, cert_id)
    assert e.value.status_code == 403 and e.value.error_code == "PCA.00030201"
    with pytest.raises(exceptions.ClientRequestException) as e:
        c.revoke_certificate(RevokeCertificateRequest(
            certificate_id=cert_id, body=RevokeCertificateRequestBody()))
    assert e.value.status_code == 403 and e.value.error_code == "PCA.00030201"

    other = _apply(c, pca["sub"], "revoked-no-reason.sdk.example.com")
    c.revoke_certificate(RevokeCertificateRequest(
        certificate_id=other, body=RevokeCertificateRequestBody()))

    c.delete_certificate(DeleteCertificateRequest(certificate_id=cert_id))
    with pytest.raises(exceptions.ClientRequestException) as e:
        c.show_certificate(ShowCertificateRequest(certificate_id=cert_id))
    assert e.value.status_code == 404 and e.value.error_code == "PCA.00030102"


def test_compressed_export_is_a_zip(pca):
    c = pca["client"]
    cert_id = _apply(c, pca["sub"], "zip.sdk.example.com")
    resp = _export(c, cert_id, "APACHE", compressed="true")
    raw = resp.raw_content
    assert raw[:2] == b"PK"
    names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    assert sorted(names) == ["chain.crt", "server.crt", "server.key"]


def test_documented_errors(pca):
    c = pca["client"]
    cases = [
        (dict(key_algorithm="DSA1024"), 400, "PCA.00020102"),
        (dict(signature_algorithm="SHA1"), 400, "PCA.00020103"),
        (dict(validity=Validity(type="YEAR", value=21)), 400, "PCA.00020109"),
        (dict(sans=[SubjectAlternativeName(type="IP", value="1.2.3")]), 400, "PCA.00020111"),
        (dict(sans=[SubjectAlternativeName(type="X400", value="a")]), 400, "PCA.00020112"),
    ]
    for kw, status, code in cases:
        with pytest.raises(exceptions.ClientRequestException) as e:
            _apply(c, pca["sub"], "err.sdk.example.com", **kw)
        assert (e.value.status_code, e.value.error_code) == (status, code), kw
    with pytest.raises(exceptions.ClientRequestException) as e:
        _apply(c, "00000000-0000-4000-8000-000000000000", "err.sdk.example.com")
    assert (e.value.status_code, e.value.error_code) == (404, "PCA.00030103")
    with pytest.raises(exceptions.ClientRequestException) as e:
        c.show_certificate(ShowCertificateRequest(certificate_id="00000000-0000-4000-8000-000000000000"))
    assert (e.value.status_code, e.value.error_code) == (404, "PCA.00030102")
