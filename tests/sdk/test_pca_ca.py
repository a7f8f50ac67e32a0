"""The official huaweicloudsdkccm v1 client drives every PCA CA operation against the emulator.

Names are unique per run (the emulator is shared by the whole session). An external CA for the
import path is made with the openssl command line.
"""
import os
import subprocess
import tempfile
import uuid

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkccm.v1 import *  # noqa: F401,F403 (the SDK's own usage style)
from huaweicloudsdkccm.v1 import CcmClient


def _dn(cn, full=True):
    if not full:
        return DistinguishedName(common_name=cn)
    return DistinguishedName(
        common_name=cn,
        country="CN",
        state="Guangdong",
        locality="Shenzhen",
        organization="SDK Org",
        organizational_unit="PKI",
    )


def _name(prefix):
    return f"{prefix} {uuid.uuid4().hex[:8]}"


@pytest.fixture
def ccm(emulator, global_credentials, http_config):
    return (
        CcmClient.new_builder()
        .with_credentials(global_credentials)
        .with_endpoints([emulator["endpoint"]])
        .with_http_config(http_config)
        .build()
    )


def _create_root(ccm, cn, validity=None):
    body = CreateCertificateAuthorityRequestBody(
        type="ROOT",
        distinguished_name=_dn(cn),
        key_algorithm="EC256",
        signature_algorithm="SHA256",
        validity=validity or Validity(type="YEAR", value=5),
    )
    resp = ccm.create_certificate_authority(CreateCertificateAuthorityRequest(body=body))
    assert len(resp.ca_id) == 36
    return resp.ca_id


def _show(ccm, ca_id):
    return ccm.show_certificate_authority(ShowCertificateAuthorityRequest(ca_id=ca_id))


def _export(ccm, ca_id):
    return ccm.export_certificate_authority_certificate(
        ExportCertificateAuthorityCertificateRequest(ca_id=ca_id)
    )


def _openssl(*args, cwd):
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_root_sub_list_show_export_quota(ccm):
    root_cn = _name("SDK Root")
    root_id = _create_root(ccm, root_cn)
    sub_body = CreateCertificateAuthorityRequestBody(
        type="SUBORDINATE",
        distinguished_name=_dn(_name("SDK Sub"), full=False),
        key_algorithm="EC384",
        signature_algorithm="SHA384",
        validity=Validity(type="MONTH", value=12),
        issuer_id=root_id,
        path_length=0,
        key_usages=["digitalSignature", "keyCertSign", "cRLSign"],
        crl_configuration=CrlConfiguration(enabled=False),
    )
    sub_id = ccm.create_certificate_authority(
        CreateCertificateAuthorityRequest(body=sub_body)
    ).ca_id

    root = _show(ccm, root_id)
    assert root.type == "ROOT" and root.status == "ACTIVED" and root.path_length == 7
    assert root.distinguished_name.common_name == root_cn
    assert root.not_after > root.not_before > 0
    assert root.crl_configuration.enabled is False
    sub = _show(ccm, sub_id)
    assert sub.issuer_id == root_id and sub.issuer_name == root_cn
    assert sub.key_algorithm == "EC384" and sub.signature_algorithm == "SHA384"
    # Inherited from the root.
    assert sub.distinguished_name.organization == "SDK Org"
    assert sub.not_after <= root.not_after

    listed = ccm.list_certificate_authority(
        ListCertificateAuthorityRequest(name=root_cn, type="ROOT", limit=1000, offset=0)
    )
    assert listed.total == 1
    assert listed.certificate_authorities[0].ca_id == root_id
    subs = ccm.list_certificate_authority(
        ListCertificateAuthorityRequest(
            type="SUBORDINATE", status="ACTIVED", sort_key="common_name", sort_dir="ASC", limit=1000
        )
    )
    assert sub_id in [c.ca_id for c in subs.certificate_authorities]

    exported = _export(ccm, sub_id)
    assert "\r\n" in exported.certificate
    assert exported.certificate.startswith("-----BEGIN CERTIFICATE-----")
    root_pem = _export(ccm, root_id).certificate
    assert exported.certificate_chain == root_pem
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "root.pem"), "w") as f:
            f.write(root_pem.replace("\r\n", "\n") + "\n")
        with open(os.path.join(d, "sub.pem"), "w") as f:
            f.write(exported.certificate.replace("\r\n", "\n") + "\n")
        assert "sub.pem: OK" in _openssl("verify", "-CAfile", "root.pem", "sub.pem", cwd=d)
        text = _openssl("x509", "-in", "sub.pem", "-noout", "-text", cwd=d)
        assert "CA:TRUE, pathlen:0" in text

    quota = ccm.show_certificate_authority_quota(ShowCertificateAuthorityQuotaRequest())
    ca_quota = [r for r in quota.quotas.resources if r.type == "CERTIFICATE_AUTHORITY"][0]
    assert ca_quota.quota == 100 and ca_quota.used >= 2


def test_pending_csr_activate_disable_enable_delete_restore(ccm):
    root_id = _create_root(ccm, _name("SDK Activate Root"))
    body = CreateCertificateAuthorityRequestBody(
        type="SUBORDINATE", distinguished_name=_dn(_name("SDK Pending")), key_algorithm="EC256"
    )
    ca_id = ccm.create_certificate_authority(CreateCertificateAuthorityRequest(body=body)).ca_id
    assert _show(ccm, ca_id).status == "PENDING"
    csr = ccm.export_certificate_authority_csr(ExportCertificateAuthorityCsrRequest(ca_id=ca_id))
    assert csr.csr.startswith("-----BEGIN CERTIFICATE REQUEST-----\r\n")

    ccm.issue_certificate_authority_certificate(
        IssueCertificateAuthorityCertificateRequest(
            ca_id=ca_id,
            body=IssueCertificateAuthorityCertificateRequestBody(
                issuer_id=root_id,
                signature_algorithm="SHA256",
                validity=Validity(type="DAY", value=30),
                path_length=0,
            ),
        )
    )
    shown = _show(ccm, ca_id)
    assert shown.status == "ACTIVED" and shown.issuer_id == root_id
    assert shown.not_after - shown.not_before == 30 * 86_400_000

    ccm.disable_certificate_authority(DisableCertificateAuthorityRequest(ca_id=ca_id))
    assert _show(ccm, ca_id).status == "DISABLED"
    ccm.enable_certificate_authority(EnableCertificateAuthorityRequest(ca_id=ca_id))
    assert _show(ccm, ca_id).status == "ACTIVED"
    ccm.disable_certificate_authority(DisableCertificateAuthorityRequest(ca_id=ca_id))
    ccm.delete_certificate_authority(DeleteCertificateAuthorityRequest(ca_id=ca_id, pending_days="7"))
    deleted = _show(ccm, ca_id)
    assert deleted.status == "DELETED" and deleted.delete_time > deleted.create_time
    ccm.restore_certificate_authority(RestoreCertificateAuthorityRequest(ca_id=ca_id))
    assert _show(ccm, ca_id).status == "DISABLED"

    # A pending CA goes at once.
    pending = ccm.create_certificate_authority(CreateCertificateAuthorityRequest(body=body)).ca_id
    ccm.delete_certificate_authority(DeleteCertificateAuthorityRequest(ca_id=pending, pending_days="7"))
    with pytest.raises(ClientRequestException) as e:
        _show(ccm, pending)
    assert e.value.status_code == 404 and e.value.error_code == "PCA.00030102"


def test_import_externally_signed_certificate(ccm):
    cn = _name("SDK Imported")
    body = CreateCertificateAuthorityRequestBody(
        type="SUBORDINATE", distinguished_name=_dn(cn), key_algorithm="EC256"
    )
    ca_id = ccm.create_certificate_authority(CreateCertificateAuthorityRequest(body=body)).ca_id
    csr = ccm.export_certificate_authority_csr(ExportCertificateAuthorityCsrRequest(ca_id=ca_id)).csr
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "sub.csr"), "w") as f:
            f.write(csr.replace("\r\n", "\n") + "\n")
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write(
                "basicConstraints=critical,CA:TRUE,pathlen:0\n"
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n"
            )
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "root.key", "-out", "root.pem", "-subj", "/CN=SDK External Root",
            "-days", "365", cwd=d,
        )
        _openssl(
            "x509", "-req", "-in", "sub.csr", "-CA", "root.pem", "-CAkey", "root.key",
            "-CAcreateserial", "-days", "90", "-extfile", "ext.cnf", "-out", "sub.pem", cwd=d,
        )
        cert = open(os.path.join(d, "sub.pem")).read()
        root = open(os.path.join(d, "root.pem")).read()
    ccm.import_certificate_authority_certificate(
        ImportCertificateAuthorityCertificateRequest(
            ca_id=ca_id,
            body=ImportCertificateAuthorityCertificateRequestBody(
                certificate=cert.replace("\n", "\r\n"), certificate_chain=root
            ),
        )
    )
    shown = _show(ccm, ca_id)
    assert shown.status == "ACTIVED" and shown.gen_mode == "IMPORT"
    assert shown.issuer_name == "SDK External Root"
    exported = _export(ccm, ca_id)
    assert exported.certificate.replace("\r\n", "\n").strip() == cert.strip()
    assert exported.certificate_chain.replace("\r\n", "\n").strip() == root.strip()


def test_revoke_subordinate(ccm):
    root_id = _create_root(ccm, _name("SDK Revoke Root"))
    body = CreateCertificateAuthorityRequestBody(
        type="SUBORDINATE",
        distinguished_name=_dn(_name("SDK Revoked Sub")),
        key_algorithm="EC256",
        signature_algorithm="SHA256",
        validity=Validity(type="YEAR", value=1),
        issuer_id=root_id,
    )
    sub_id = ccm.create_certificate_authority(CreateCertificateAuthorityRequest(body=body)).ca_id
    ccm.revoke_certificate_authority(
        RevokeCertificateAuthorityRequest(
            ca_id=sub_id, body=RevokeCertificateRequestBody(reason="KEY_COMPROMISE")
        )
    )
    with pytest.raises(ClientRequestException) as e:
        ccm.revoke_certificate_authority(
            RevokeCertificateAuthorityRequest(ca_id=sub_id, body=RevokeCertificateRequestBody())
        )
    assert e.value.status_code == 403 and e.value.error_code == "PCA.00030201"


def test_obs_agency_and_buckets(ccm):
    ccm.create_certificate_authority_obs_agency(CreateCertificateAuthorityObsAgencyRequest())
    granted = ccm.show_certificate_authority_obs_agency(ShowCertificateAuthorityObsAgencyRequest())
    assert granted.agency_granted == "true"
    buckets = ccm.list_certificate_authority_obs_bucket(ListCertificateAuthorityObsBucketRequest())
    assert buckets.total == len(buckets.obs_buckets) >= 1
    bucket = buckets.obs_buckets[0]
    assert bucket.bucket_name and bucket.create_time > 0
    root_id = ccm.create_certificate_authority(
        CreateCertificateAuthorityRequest(
            body=CreateCertificateAuthorityRequestBody(
                type="ROOT",
                distinguished_name=_dn(_name("SDK CRL Root")),
                key_algorithm="EC256",
                signature_algorithm="SHA256",
                validity=Validity(type="YEAR", value=1),
                crl_configuration=CrlConfiguration(
                    enabled=True, obs_bucket_name=bucket.bucket_name, valid_days=10
                ),
            )
        )
    ).ca_id
    crl = _show(ccm, root_id).crl_configuration
    assert crl.enabled is True and crl.valid_days == 10
    assert crl.crl_dis_point.endswith(f"/{root_id}.crl")


@pytest.mark.parametrize(
    "mutate,status,code",
    [
        (lambda b: setattr(b, "key_algorithm", "RSA1024"), 400, "PCA.00020102"),
        (lambda b: setattr(b, "type", "LEAF"), 400, "PCA.00020202"),
        (lambda b: setattr(b, "validity", Validity(type="YEAR", value=31)), 400, "PCA.00020109"),
        (lambda b: setattr(b.distinguished_name, "country", "CHN"), 400, "PCA.00020101"),
    ],
)
def test_create_errors(ccm, mutate, status, code):
    body = CreateCertificateAuthorityRequestBody(
        type="ROOT",
        distinguished_name=_dn(_name("SDK Bad")),
        key_algorithm="EC256",
        signature_algorithm="SHA256",
        validity=Validity(type="YEAR", value=1),
    )
    mutate(body)
    with pytest.raises(ClientRequestException) as e:
        ccm.create_certificate_authority(CreateCertificateAuthorityRequest(body=body))
    assert (e.value.status_code, e.value.error_code) == (status, code)


def test_state_and_lookup_errors(ccm):
    unknown = str(uuid.uuid4())
    with pytest.raises(ClientRequestException) as e:
        _show(ccm, unknown)
    assert (e.value.status_code, e.value.error_code) == (404, "PCA.00030102")
    with pytest.raises(ClientRequestException) as e:
        _show(ccm, "not-a-uuid")
    assert (e.value.status_code, e.value.error_code) == (400, "PCA.00020201")
    root_id = _create_root(ccm, _name("SDK Errors Root"))
    with pytest.raises(ClientRequestException) as e:
        ccm.enable_certificate_authority(EnableCertificateAuthorityRequest(ca_id=root_id))
    assert (e.value.status_code, e.value.error_code) == (403, "PCA.00030201")
    ccm.disable_certificate_authority(DisableCertificateAuthorityRequest(ca_id=root_id))
    with pytest.raises(ClientRequestException) as e:
        ccm.delete_certificate_authority(
            DeleteCertificateAuthorityRequest(ca_id=root_id, pending_days="3")
        )
    assert (e.value.status_code, e.value.error_code) == (400, "PCA.00020001")
    with pytest.raises(ClientRequestException) as e:
        ccm.list_certificate_authority(ListCertificateAuthorityRequest(status="ACTIVE"))
    assert (e.value.status_code, e.value.error_code) == (400, "PCA.00020404")
