"""SCM v3 through the official huaweicloudsdkscm client: every operation the emulator serves
succeeds and decodes, and documented errors come back as ClientRequestException."""
import subprocess

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkscm.v3 import (
    BatchPushCertificateRequest,
    BatchPushCertificateRequestBody,
    DeleteCertificateRequest,
    DeployCertificateRequest,
    DeployCertificateRequestBody,
    DeployedResource,
    ExportCertificateRequest,
    ImportCertificateRequest,
    ImportCertificateRequestBody,
    ListCertificatesRequest,
    PushCertificateRequest,
    PushCertificateRequestBody,
    ScmClient,
    ShowCertificateRequest,
)


@pytest.fixture
def client(emulator, global_credentials, http_config):
    return (
        ScmClient.new_builder()
        .with_credentials(global_credentials)
        .with_endpoints([emulator["endpoint"]])
        .with_http_config(http_config)
        .build()
    )


def _self_signed(tmp_path, cn, days=30):
    """An EC P-256 key and a self-signed certificate for `cn`, made by the openssl CLI."""
    key, cert = tmp_path / f"{cn}.key", tmp_path / f"{cn}.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(days),
            "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn},DNS:www.{cn}",
        ],
        check=True,
        capture_output=True,
    )
    return cert.read_text(), key.read_text()


def _import(client, name, cert, key, **extra):
    body = ImportCertificateRequestBody(name=name, certificate=cert, private_key=key, **extra)
    return client.import_certificate(ImportCertificateRequest(body=body))


def test_every_operation(client, tmp_path):
    cert, key = _self_signed(tmp_path, "sdk.example.org")
    imported = _import(client, "sdk-cert", cert, key, duplicate_check=False)
    cert_id = imported.certificate_id
    assert cert_id.startswith("scs") and len(cert_id) == 16

    listed = client.list_certificates(
        ListCertificatesRequest(
            limit=10, offset=0, sort_dir="ASC", sort_key="certExpiredTime", status="UPLOAD",
            deploy_support=True, expired_days_since=30, content="sdk",
        )
    )
    assert listed.total_count == 1
    row = listed.certificates[0]
    assert row.id == cert_id and row.domain == "sdk.example.org"
    assert row.sans == "sdk.example.org;www.sdk.example.org"
    assert row.status == "UPLOAD" and row.deploy_support is True
    assert row.signature_algorithm == "SHA256WITHECDSA"

    shown = client.show_certificate(ShowCertificateRequest(certificate_id=cert_id))
    assert shown.name == "sdk-cert" and shown.push_support == "ON"
    assert len(shown.fingerprint) == 40 and shown.not_after

    exported = client.export_certificate(ExportCertificateRequest(certificate_id=cert_id))
    assert "\r\n" in exported.certificate
    assert exported.certificate.replace("\r\n", "\n").strip() == cert.strip()
    assert "PRIVATE KEY" in exported.private_key

    client.push_certificate(
        PushCertificateRequest(
            certificate_id=cert_id,
            body=PushCertificateRequestBody(target_project="my-kualalumpur-1", target_service="waf"),
        )
    )
    pushed = client.batch_push_certificate(
        BatchPushCertificateRequest(
            certificate_id=cert_id,
            body=BatchPushCertificateRequestBody(
                target_projects=["cn-north-4", "ap-southeast-1"], target_service="ELB"
            ),
        )
    )
    assert [r.message for r in pushed.results] == ["success", "success"]
    assert pushed.results[0].project_name == "cn-north-4" and pushed.results[0].cert_id == cert_id

    deployed = client.deploy_certificate(
        DeployCertificateRequest(
            certificate_id=cert_id,
            body=DeployCertificateRequestBody(
                project_name="cn-north-4",
                service_name="WAF",
                resources=[DeployedResource(id="a1b2c3", type="premium", enterprise_project_id="0")],
            ),
        )
    )
    assert deployed.failure_list == []

    client.delete_certificate(DeleteCertificateRequest(certificate_id=cert_id))
    with pytest.raises(ClientRequestException) as e:
        client.show_certificate(ShowCertificateRequest(certificate_id=cert_id))
    assert e.value.status_code == 400 and e.value.error_code == "SCM.0008"


def test_errors(client, tmp_path):
    cert, _ = _self_signed(tmp_path, "one.example.org")
    _, other_key = _self_signed(tmp_path, "two.example.org")
    with pytest.raises(ClientRequestException) as e:
        _import(client, "mismatch", cert, other_key)
    assert e.value.status_code == 400 and e.value.error_code == "SCM.0014"

    with pytest.raises(ClientRequestException) as e:
        _import(client, "x", cert, other_key)
    assert e.value.error_code == "SCM.0032"

    with pytest.raises(ClientRequestException) as e:
        client.list_certificates(ListCertificatesRequest(limit=15))
    assert e.value.status_code == 400 and e.value.error_code == "SCM.0005"

    with pytest.raises(ClientRequestException) as e:
        client.list_certificates(ListCertificatesRequest(expired_days_since=2000))
    assert e.value.error_code == "SCM.0005"
