"""The client's HTTP transport to `encvit fhe-serve`: the same messages as in memory, over the network.

A server that does not answer (restarting, a dropped connection, 502-504) is asked again with growing pauses for up
to `server_wait` seconds; every message that changes the server's state names its iteration, so asking again never
applies it twice. A refusal (4xx) stops the run with the server's one-line reason.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx

from ..common.errors import ConfigError, EncvitError
from .params import PRESETS
from .transport import JobSettings, Transport
from .wire import (
    JOB_HEADER,
    check_value,
    check_versions,
    pack,
    params_hash,
    protocol_headers,
    unpack,
    weights_parts,
    weights_state,
)

RETRY_STATUS = {502, 503, 504}
FIRST_PAUSE, LONGEST_PAUSE = 0.5, 10.0


class ServerRefused(EncvitError):
    """The server answered 4xx: the message names the status and the server's reason."""


class ServerGone(EncvitError):
    """The server did not answer within --server-wait seconds."""


class Http(Transport):
    """Messages to one job on `encvit fhe-serve` at `url`, with the caller's token."""

    def __init__(
        self,
        url: str,
        token: str,
        server_wait: float = 600.0,
        keep: bool = False,
        job: str | None = None,
        timeout: float = 3600.0,
    ):
        super().__init__()
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--server {url}: give the URL the server printed, e.g. http://127.0.0.1:8765")
        self.url, self.server_wait, self.keep, self.job = url.rstrip("/"), server_wait, keep, job
        self.params: str | None = None
        self.http = Counter()  # requests, bytes up and down as sent over HTTP (bodies), retries
        self._refresh_needed = True
        self._client = httpx.Client(
            headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(timeout, connect=10.0)
        )

    # ---- requests with retries -------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        iteration: int | None = None,
        body: bytes | None = None,
        headers: dict | None = None,
        params: dict | None = None,
    ) -> httpx.Response:
        """One request, asked again while the server is away (up to server_wait seconds); 4xx raises ServerRefused."""
        all_headers = {**protocol_headers(self.params, self.job, iteration), **(headers or {})}
        deadline, pause = time.monotonic() + self.server_wait, FIRST_PAUSE
        while True:
            try:
                response = self._client.request(
                    method, self.url + path, content=body, headers=all_headers, params=params
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRY_STATUS:
                    break
                problem = f"HTTP {response.status_code}"
            if time.monotonic() + pause > deadline:
                raise ServerGone(
                    f"{self.url} did not answer for {self.server_wait:g} s (--server-wait); last: {problem}"
                )
            self.http["retries"] += 1
            time.sleep(pause)
            pause = min(2 * pause, LONGEST_PAUSE)
        self.http["requests"] += 1
        parts = path.strip("/").split("/")  # /jobs, /jobs/ID, /jobs/ID/step, /jobs/ID/train/3
        route = parts[2] if len(parts) > 2 else "job" if len(parts) == 2 else parts[0]
        self.http[f"{method} {route}"] += 1  # e.g. "POST step", "GET weights": round trips by kind
        self.http["bytes_up"] += len(body or b"")
        self.http["bytes_down"] += len(response.content)
        if response.status_code >= 400:
            try:
                reason = response.json().get("error", response.text)
            except ValueError:
                reason = response.text
            raise ServerRefused(f"{self.url} refused {method} {path} (HTTP {response.status_code}): {reason}")
        check_versions(response.headers)
        if self.job is not None and JOB_HEADER in response.headers:
            check_value(response.headers, JOB_HEADER, self.job)
        return response

    def _json(self, *args, **kwargs) -> dict:
        return self.request(*args, **kwargs).json()

    def _job_path(self, rest: str = "") -> str:
        return f"/jobs/{self.job}{rest}"

    def close(self) -> None:
        self._client.close()

    # ---- the messages -------------------------------------------------------------------------------------------
    def resume(self, job: str, settings: JobSettings) -> dict:
        """Take up job `job` (a rerun of the same command): its state on the server."""
        self.job, self.params = job, params_hash(PRESETS[settings.preset])
        status = self._json("GET", self._job_path())
        if status["settings"] != settings.as_dict():
            raise ConfigError(f"job {job} on {self.url} was made with other settings: {status['settings']}")
        if status["status"] != "open":
            raise ConfigError(f"job {job} on {self.url} is {status['status']}: its ciphertexts are gone")
        self._refresh_needed = status.get("needs_refresh", True)
        return status

    def status(self) -> dict:
        """The job's state on the server."""
        return self._json("GET", self._job_path())

    def open_job(self, public: bytes, settings: JobSettings) -> None:
        self.params = params_hash(PRESETS[settings.preset])
        self.count("client_to_server", "public_keys", public)
        query = {**settings.as_dict(), "keep": str(self.keep).lower()}
        status = self._json(
            "POST", "/jobs", body=public, headers={"Content-Type": "application/octet-stream"}, params=query
        )
        self.job = status["job"]

    def uploaded(self) -> tuple[int, int]:
        chunks = self.status()["chunks"]
        return chunks["train"], chunks["validation"]

    def _put_chunk(self, kind: str, index: int, parts: dict, count: int | None = None) -> None:
        headers, body = pack(parts)
        self.request(
            "PUT",
            self._job_path(f"/{kind}/{index}"),
            body=body,
            headers=headers,
            params={"count": count} if count is not None else None,
        )

    def put_block(self, index: int, block: dict) -> None:
        parts = {
            k: self.count("client_to_server", "features_and_labels", block[k])
            for k in ("forward", "gradient", "labels")
        }
        self._put_chunk("train", index, parts, int(block["count"]))

    def put_validation(self, index: int, block: dict) -> None:
        self._put_chunk(
            "validation", index, {"forward": self.count("client_to_server", "validation_features", block["forward"])}
        )

    def put_weights(self, iteration: int, state, initial: bool = False) -> None:
        self.count("client_to_server", "initial_weights" if initial else "refresh", state)
        headers, body = pack(weights_parts(state))
        answer = self._json("PUT", self._job_path("/weights"), iteration, body=body, headers=headers)
        self._refresh_needed = answer.get("needs_refresh", False)

    def get_weights(self, iteration: int, names=("u", "w")):
        response = self.request("GET", self._job_path("/weights"), iteration, params={"names": ",".join(names)})
        state = weights_state(unpack(response.headers, response.content))
        return self.count("server_to_client", "refresh", {name: forms["update"] for name, forms in state.items()})

    def needs_refresh(self) -> bool:
        return self._refresh_needed

    def step(self, iteration: int, block_ids: list[int], lr: float) -> None:
        answer = self._json(
            "POST",
            self._job_path("/step"),
            iteration,
            params={"blocks": ",".join(map(str, block_ids)), "lr": repr(float(lr))},
        )
        self._refresh_needed = answer["needs_refresh"]

    def validation_logits(self, iteration: int):
        response = self.request("GET", self._job_path("/validation-logits"), iteration)
        parts = unpack(response.headers, response.content)
        logits = [parts[f"block{b}"] for b in range(len(parts))]
        return self.count("server_to_client", "validation_logits", logits)

    def server_stats(self) -> dict:
        status = self.status()
        return {k: status[k] for k in ("operations", "server_disk_bytes", "server_validation_seconds")}

    def finish(self, keep: bool = False) -> None:
        if self.job is not None:
            self._json("POST", self._job_path("/finish"), params={"keep": str(keep or self.keep).lower()})
