"""An official MCP Python SDK client for the e2e tests (driven by tests/src/python.rs).

argv[1] is a JSON job: {"mode": ..., "server_url": ..., "tool": ..., "arguments": {...},
plus the mode's parameters}. The client connects over streamable HTTP, lists the tools, calls
`tool`, and prints one JSON line: {"tools": [...], "result": {...}} or {"error": "..."}.

Modes (each an SDK auth provider, used as an application would):
  authorization_code  OAuthClientProvider with DCR (or `client_metadata_url` when the job gives
                      one and the server advertises CIMD). The browser part is the Rust side's:
                      this prints `AUTHORIZE <url>` and reads `CALLBACK <url>` from stdin.
  cimd                the same provider with `client_metadata_url` (required): the client's id
                      is that URL, used when the server advertises
                      client_id_metadata_document_supported; `client_id` in the result says
                      which way it went.
  client_credentials  ClientCredentialsOAuthProvider: `client_id`, `client_secret`, `issuer`,
                      optional `token_endpoint_auth_method` and `scope`.
  private_key_jwt     PrivateKeyJWTOAuthProvider (client_credentials with a signed client
                      assertion, SignedJWTParameters): `client_id`, `signing_key` (PEM),
                      `signing_algorithm`, `issuer`, optional `scope`.
  identity_assertion  IdentityAssertionOAuthProvider (the ID-JAG grant): `client_id`,
                      `client_secret`, `issuer`, optional `token_endpoint_auth_method` and
                      `scope`; the ID-JAG is `id_jag` as given, or comes from an RFC 8693 token
                      exchange of `idp.id_token` at `idp.token_endpoint` (as `idp.client_id`,
                      `idp.client_secret`) for the issuer and the server's resource.

SSL_CERT_FILE (a test CA) is honoured for https URLs.
"""

import json
import os
import ssl
import sys
import traceback
from urllib.parse import parse_qs, urlparse

import anyio
import httpx2

from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)


class MemoryStorage:
    """Tokens and client registration, kept for the run only."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def emit(kind: str, payload: str) -> None:
    print(f"{kind} {payload}", flush=True)


async def redirect_handler(url: str) -> None:
    emit("AUTHORIZE", url)


async def callback_handler() -> AuthorizationCodeResult:
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    kind, _, url = line.strip().partition(" ")
    if kind != "CALLBACK":
        raise RuntimeError(f"expected CALLBACK <url> on stdin, got {line!r}")
    query = parse_qs(urlparse(url).query)
    if "code" not in query:
        raise RuntimeError(f"the authorization server sent the client back without a code: {url}")
    return AuthorizationCodeResult(
        code=query["code"][0],
        state=query.get("state", [None])[0],
        iss=query.get("iss", [None])[0],
    )


def authorization_code(job: dict, storage: MemoryStorage) -> httpx2.Auth:
    metadata = OAuthClientMetadata(
        client_name=job.get("client_name", "warden-e2e-python"),
        redirect_uris=[job["redirect_uri"]],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
    )
    return OAuthClientProvider(
        server_url=job["server_url"],
        client_metadata=metadata,
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=job.get("client_metadata_url"),
    )


def cimd(job: dict, storage: MemoryStorage) -> httpx2.Auth:
    if not job.get("client_metadata_url"):
        raise ValueError("mode cimd needs client_metadata_url")
    return authorization_code(job, storage)


def client_credentials(job: dict, storage: MemoryStorage) -> httpx2.Auth:
    return ClientCredentialsOAuthProvider(
        server_url=job["server_url"],
        storage=storage,
        client_id=job["client_id"],
        client_secret=job["client_secret"],
        token_endpoint_auth_method=job.get("token_endpoint_auth_method", "client_secret_basic"),
        scope=job.get("scope"),
        issuer=job["issuer"],
    )


def private_key_jwt(job: dict, storage: MemoryStorage) -> httpx2.Auth:
    signed = SignedJWTParameters(
        issuer=job["client_id"],
        subject=job["client_id"],
        signing_key=job["signing_key"],
        signing_algorithm=job.get("signing_algorithm", "RS256"),
    )
    return PrivateKeyJWTOAuthProvider(
        server_url=job["server_url"],
        storage=storage,
        client_id=job["client_id"],
        assertion_provider=signed.create_assertion_provider(),
        scope=job.get("scope"),
        issuer=job["issuer"],
    )


TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"


def id_jag_source(job: dict):
    """The assertion provider: the job's ID-JAG, or one exchanged for at the identity provider."""

    async def given(audience: str, resource: str) -> str:
        return job["id_jag"]

    async def exchanged(audience: str, resource: str) -> str:
        idp = job["idp"]
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "requested_token_type": ID_JAG,
            "subject_token": idp["id_token"],
            "subject_token_type": ID_TOKEN,
            "audience": audience,
            "resource": resource,
            "client_id": idp["client_id"],
            "client_secret": idp["client_secret"],
        }
        async with httpx2.AsyncClient(timeout=30.0, verify=verify()) as http:
            resp = await http.post(idp["token_endpoint"], data=form)
        if resp.status_code != 200:
            raise RuntimeError(f"the identity provider refused the token exchange: {resp.text}")
        return resp.json()["access_token"]

    return given if "id_jag" in job else exchanged


def identity_assertion(job: dict, storage: MemoryStorage) -> httpx2.Auth:
    return IdentityAssertionOAuthProvider(
        server_url=job["server_url"],
        storage=storage,
        client_id=job["client_id"],
        client_secret=job["client_secret"],
        issuer=job["issuer"],
        assertion_provider=id_jag_source(job),
        scope=job.get("scope"),
        token_endpoint_auth_method=job.get("token_endpoint_auth_method", "client_secret_post"),
    )


PROVIDERS = {
    "authorization_code": authorization_code,
    "cimd": cimd,
    "client_credentials": client_credentials,
    "private_key_jwt": private_key_jwt,
    "identity_assertion": identity_assertion,
}


def verify() -> ssl.SSLContext | bool:
    cafile = os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile) if cafile else True


async def run(job: dict) -> dict:
    storage = MemoryStorage()
    auth = PROVIDERS[job["mode"]](job, storage)
    timeout = httpx2.Timeout(30.0, read=60.0)
    async with httpx2.AsyncClient(auth=auth, timeout=timeout, verify=verify()) as http:
        async with streamable_http_client(job["server_url"], http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                out: dict = {"tools": sorted(t.name for t in tools.tools)}
                if job.get("tool"):
                    result = await session.call_tool(job["tool"], job.get("arguments", {}))
                    out["result"] = result.model_dump(mode="json", exclude_none=True)
                if storage.tokens is not None:
                    out["token"] = storage.tokens.model_dump(mode="json", exclude_none=True)
                if storage.client_info is not None:
                    out["client_id"] = storage.client_info.client_id
                return out


def main() -> None:
    job = json.loads(sys.argv[1])
    try:
        out = anyio.run(run, job)
    except BaseException as e:  # noqa: BLE001 - the test reads the reason
        chain = []
        while e is not None:
            if isinstance(e, BaseExceptionGroup):
                chain.extend(f"{type(x).__name__}: {x}" for x in e.exceptions)
            chain.append(f"{type(e).__name__}: {e}")
            e = e.__cause__ or e.__context__
        traceback.print_exc(file=sys.stderr)
        out = {"error": " <- ".join(chain)}
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
