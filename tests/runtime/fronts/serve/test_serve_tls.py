"""`attnmap serve` over HTTPS (``tls_cert``/``tls_key``, uvicorn's ``ssl_certfile``/``ssl_keyfile``):
a self-signed certificate made by ``openssl`` in the test, a real server on 127.0.0.1, httpx."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import httpx
import pytest
from click.testing import CliRunner

from attnmap import Explainer
from attnmap.cli import main
from attnmap.runtime.core.errors import ServeError
from attnmap.runtime.fronts.serve import runner, security
from attnmap.runtime.fronts.serve.app import ServerSettings, create_app
from attnmap.runtime.fronts.serve.runner import BackgroundServer, TLSFiles
from serve_helpers import SHIPPED

TOKEN = "tls-token-0123456789abcdef"


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and its unencrypted key (PEM files)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: the HTTPS tests make their certificate with it")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=120)
    return cert, key


def test_the_server_speaks_https_with_a_certificate_and_its_key(cert):
    app = create_app(Explainer(SHIPPED), None, ServerSettings(token=TOKEN))
    with BackgroundServer(app, tls=TLSFiles(*cert)) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=srv.url, timeout=30, verify=False, follow_redirects=False) as c:
            assert c.get("/healthz").json()["status"] == "ok"
            assert c.get("/v1/model").status_code == 401
            r = c.get("/v1/model", headers={"Authorization": "Bearer " + TOKEN})
            assert r.status_code == 200 and r.json()["path"] == SHIPPED.name
            # over HTTPS the page's cookie is Secure: the browser never sends it in clear
            r = c.get("/?token=" + TOKEN)
            assert r.status_code == 303 and "; Secure" in r.headers["set-cookie"]
        # the certificate served is the one given
        served = ssl.get_server_certificate(("127.0.0.1", srv.port))
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(cert[0].read_text())
        # plain HTTP to the HTTPS port gets no answer
        with pytest.raises(httpx.HTTPError):
            httpx.get(srv.url.replace("https://", "http://") + "/healthz", timeout=10)


def test_bad_tls_files_are_one_clear_error(cert, tmp_path):
    with pytest.raises(ServeError, match="needs both tls_cert and tls_key; got only tls_cert"):
        TLSFiles.from_options(cert[0], None)
    assert TLSFiles.from_options(None, None) is None
    with pytest.raises(ServeError, match="cannot read tls_cert"):
        TLSFiles(tmp_path / "missing.pem", cert[1])
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ServeError, match="must be a PEM certificate and its unencrypted private key"):
        TLSFiles(tmp_path / "junk.pem", cert[1])
    with pytest.raises(ServeError, match="must be a PEM certificate"):
        TLSFiles(cert[1], cert[0])  # swapped


def test_cli_passes_the_tls_files_to_uvicorn(cert, monkeypatch):
    seen = {}
    monkeypatch.setattr(runner, "run_server", lambda app, host, port, **kw: seen.update(app=app, **kw))
    monkeypatch.delenv(security.TOKEN_ENV, raising=False)
    r = CliRunner().invoke(main, ["serve", "--model", str(SHIPPED), "--tls-cert", str(cert[0]),
                                  "--tls-key", str(cert[1]), "--port", "8443"])
    assert r.exit_code == 0, r.output
    assert "https://127.0.0.1:8443/" in r.stderr
    assert seen["tls"] == TLSFiles(*cert)
    config = runner.uvicorn_config(seen["app"], tls=seen["tls"])
    assert (config.ssl_certfile, config.ssl_keyfile) == (str(cert[0]), str(cert[1]))
    r = CliRunner().invoke(main, ["serve", "--model", str(SHIPPED), "--tls-key", str(cert[1])])
    assert r.exit_code == 1 and "got only tls_key" in r.output and len(r.output.strip().splitlines()) == 1
