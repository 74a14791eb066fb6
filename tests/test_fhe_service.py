"""`encvit fhe-serve` and `fhe-train --server`: client and server as separate processes on 127.0.0.1.

A run through the server equals the in-process run; a server killed with SIGKILL and started again, and a client
killed and run again, lose nothing; tokens keep jobs apart; no file the server writes holds a secret key; limits and
mismatches are refused in one line; two jobs train at once while /health answers.
"""

from __future__ import annotations

import os
import stat
import threading
import time

import httpx
import numpy as np
import pytest
import tenseal as ts
from fhe_service import (
    ENCVIT,
    Server,
    client,
    finish,
    free_port,
    job_states,
    new_token,
    result,
    wait_for,
    write_features,
)

from encvit.fhe import ckks
from encvit.fhe.client import Client
from encvit.fhe.config import FHEConfig
from encvit.fhe.params import PRESETS
from encvit.fhe.pipeline import fhe_train
from encvit.fhe.transport import JobSettings
from encvit.fhe.wire import PROTOCOL_HEADER, pack, params_hash, protocol_headers

EPOCHS = 3
SETTINGS = JobSettings("n16384-l5", features=8, classes=3, batch_size=64, softmax_radius=4.0, momentum=0.9)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A server with two tokens, a features file and the in-process run's accuracy on it."""
    root = tmp_path_factory.mktemp("service")
    data = root / "data"
    tokens = {name: new_token(data, name) for name in ("alice", "bob")}
    features = write_features(root / "f.npz")
    solo = fhe_train(FHEConfig(features=str(features), components="all", batch_size=64, epochs=EPOCHS), progress=False)
    server = Server(data, free_port())
    yield {"root": root, "data": data, "tokens": tokens, "features": features, "server": server, "solo": solo}
    server.stop()


def api(service, token: str | None = "alice", **headers) -> httpx.Client:
    auth = {"Authorization": f"Bearer {service['tokens'][token]}"} if token else {}
    return httpx.Client(base_url=service["server"].url, headers={**auth, **protocol_headers(), **headers}, timeout=60)


def public_keys() -> bytes:
    return Client(PRESETS[SETTINGS.preset], SETTINGS.layout()).public_bytes()


def open_job(service, token: str = "alice", public: bytes | None = None) -> httpx.Response:
    with api(service, token, **{"X-Encvit-Params": params_hash(PRESETS[SETTINGS.preset])}) as http:
        return http.post(
            "/jobs",
            content=public if public is not None else public_keys(),
            headers={"Content-Type": "application/octet-stream"},
            params=SETTINGS.as_dict(),
        )


def test_a_run_through_the_server_equals_the_in_process_run_and_leaves_no_ciphertext(service, tmp_path):
    out = tmp_path / "run"
    finish(client(service["features"], service["server"].url, service["tokens"]["alice"], out, EPOCHS))
    remote, solo = result(out), service["solo"]
    assert abs(remote["encrypted_test_acc"] - solo["encrypted_test_acc"]) <= 0.5
    assert remote["iterations"] == solo["iterations"] and remote["server"]["url"] == service["server"].url
    # the client's keys stay with the client, readable by its owner only
    assert stat.S_IMODE((out / "secret-context.tenseal").stat().st_mode) == 0o600
    assert ts.context_from((out / "secret-context.tenseal").read_bytes()).is_private()
    assert not (tmp_path / "run.client").exists()
    # the finished job keeps its record; its ciphertexts are gone
    (job,) = [s for s in job_states(service["data"]) if s["id"] == remote["server"]["job"]]
    folder = service["data"] / "jobs" / job["id"]
    assert job["status"] == "finished" and [p.name for p in folder.iterdir()] == ["job.json"]


def test_a_server_killed_mid_training_and_started_again_loses_nothing(service, tmp_path):
    data, port = tmp_path / "data", free_port()
    token = new_token(data, "carol")
    server = Server(data, port)
    try:
        process = client(service["features"], server.url, token, tmp_path / "run", EPOCHS)
        wait_for(lambda: any(s["iteration"] >= 3 for s in job_states(data)), what="three steps on the server")
        server.stop()  # SIGKILL, mid-training
        time.sleep(1.0)  # the client meets a closed port and keeps asking
        server = Server(data, port)
        finish(process)
    finally:
        server.stop()
    remote = result(tmp_path / "run")
    assert abs(remote["encrypted_test_acc"] - service["solo"]["encrypted_test_acc"]) <= 0.5
    assert remote["iterations"] == service["solo"]["iterations"]  # no step taken twice, none skipped
    assert remote["server"]["http"]["retries"] >= 1


def test_a_client_killed_mid_training_goes_on_when_run_again(service, tmp_path):
    out, url, token = tmp_path / "run", service["server"].url, service["tokens"]["bob"]
    process = client(service["features"], url, token, out, EPOCHS)
    progress = tmp_path / "run.client" / "progress.npz"
    wait_for(progress.exists, what="the client's first saved step")
    time.sleep(1.0)
    process.kill()
    process.wait()
    with api(service, "bob") as http:
        (job,) = [j for j in http.get("/jobs").json() if j["status"] == "open"]
    assert job["iteration"] >= 1
    finish(client(service["features"], url, token, out, EPOCHS))
    remote = result(out)
    assert remote["server"]["job"] == job["id"]  # the same job, taken up
    assert abs(remote["encrypted_test_acc"] - service["solo"]["encrypted_test_acc"]) <= 0.5
    assert remote["iterations"] == service["solo"]["iterations"]


def test_an_upload_cut_off_goes_on_from_the_first_missing_chunk(service):
    from encvit.fhe.remote import Http

    created = open_job(service).json()
    assert created["chunks"] == {"train": 0, "validation": 0}
    keys = Client(PRESETS[SETTINGS.preset], SETTINGS.layout())
    wire = Http(service["server"].url, service["tokens"]["alice"], server_wait=10)
    wire.open_job(keys.public_bytes(), SETTINGS)
    x, y = np.zeros((64, 8)), np.eye(3)[np.arange(64) % 3]
    for index in range(2):
        wire.put_block(index, keys.encrypt_block(x, y))
    again = Http(service["server"].url, service["tokens"]["alice"], server_wait=10)
    assert again.resume(wire.job, SETTINGS)["chunks"] == {"train": 2, "validation": 0}
    assert again.uploaded() == (2, 0)
    headers, body = pack({k: v for k, v in keys.encrypt_block(x, y).items() if k != "count"})
    with api(service, **{"X-Encvit-Params": params_hash(PRESETS[SETTINGS.preset]), "X-Encvit-Job": wire.job}) as http:
        skipped = http.put(f"/jobs/{wire.job}/train/3", content=body, headers=headers, params={"count": 64})
        repeated = http.put(f"/jobs/{wire.job}/train/1", content=body, headers=headers, params={"count": 64})
    assert skipped.status_code == 409 and "send 2" in skipped.json()["error"]
    assert repeated.status_code == 200 and repeated.json()["chunks"]["train"] == 2  # answered as before
    for job in (created["job"], wire.job):
        with api(service) as http:
            assert http.delete(f"/jobs/{job}").status_code == 200


def test_tokens_keep_jobs_apart(service, tmp_path):
    job = open_job(service, "alice").json()["job"]
    with api(service, "bob", **{"X-Encvit-Job": job, "X-Encvit-Params": params_hash(PRESETS[SETTINGS.preset])}) as bob:
        assert job not in [j["id"] for j in bob.get("/jobs").json()]
        for method, path in (
            ("GET", ""),
            ("DELETE", ""),
            ("GET", "/weights"),
            ("POST", "/finish"),
            ("GET", "/validation-logits"),
        ):
            answer = bob.request(method, f"/jobs/{job}{path}", headers={"X-Encvit-Iteration": "0"})
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["error"] == f"no job {job}"
    with httpx.Client(base_url=service["server"].url, headers=protocol_headers()) as nobody:
        assert nobody.get("/jobs").status_code == 401
        assert nobody.get("/jobs", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    with api(service, "alice") as alice:
        assert job in [j["id"] for j in alice.get("/jobs").json()]
        assert alice.delete(f"/jobs/{job}").status_code == 200
        assert alice.get(f"/jobs/{job}").status_code == 404
    # a revoked token is refused from the next request on, without a restart
    dave = new_token(service["data"], "dave")
    with httpx.Client(
        base_url=service["server"].url, headers={**protocol_headers(), "Authorization": f"Bearer {dave}"}
    ) as d:
        assert d.get("/jobs").status_code == 200
        import subprocess

        subprocess.run(
            [*ENCVIT, "fhe-serve", "--data", str(service["data"]), "--revoke-token", "dave"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert d.get("/jobs").status_code == 401


def test_no_file_the_server_wrote_holds_a_secret_key(service):
    from encvit.fhe.features import read_features_file
    from encvit.fhe.remote import Http
    from encvit.fhe.train import train_encrypted

    # a kept job: public keys, chunks, weights and validation logits all stay on the server's disk
    wire = Http(service["server"].url, service["tokens"]["alice"], server_wait=10)
    config = FHEConfig(features=str(service["features"]), components="all", batch_size=64, epochs=1)
    train_encrypted(read_features_file(service["features"]), config, progress=False, transport=wire, keep=True)
    private = ckks.new_context(PRESETS[SETTINGS.preset])
    before = sorted(p.name for p in (service["data"] / "jobs").iterdir())
    secret = private.serialize(save_secret_key=True)
    refused = open_job(service, public=len(secret).to_bytes(8, "little") + secret)
    assert refused.status_code == 400 and "secret key" in refused.json()["error"]
    assert sorted(p.name for p in (service["data"] / "jobs").iterdir()) == before  # nothing stored
    files = [p for p in service["data"].rglob("*") if p.is_file()]
    kinds = {p.name for p in files} | {p.parent.name.split("-")[0] for p in files}
    assert {"public.bin", "job.json", "store", "weights", "0"} <= kinds, kinds
    loaded = []
    for path in files:
        data = path.read_bytes()
        framed = data[8 : 8 + int.from_bytes(data[:8], "little")]  # public.bin: a length, then the context
        for candidate in (data, framed):
            try:
                context = ts.context_from(candidate)
            except Exception:  # not a context at all: ciphertexts, JSON, keys of other kinds
                continue
            loaded.append(path.name)
            assert not context.is_private(), f"{path} loads as a private context"
    assert "public.bin" in loaded  # the scan reads contexts: the public one loads, and is public
    with api(service) as http:
        assert http.delete(f"/jobs/{wire.job}").status_code == 200


def test_mismatches_limits_and_a_foreign_ciphertext_are_refused_naming_the_values(service, tmp_path):
    with api(service, **{PROTOCOL_HEADER: "2"}) as http:
        answer = http.get("/jobs")
    assert answer.status_code == 409 and "'2'" in answer.json()["error"] and "'1'" in answer.json()["error"]
    with api(service, **{"X-Encvit-Params": "0123456789abcdef"}) as http:
        answer = http.post(
            "/jobs", content=b"x", headers={"Content-Type": "application/octet-stream"}, params=SETTINGS.as_dict()
        )
    assert answer.status_code == 409 and "0123456789abcdef" in answer.json()["error"]
    # a ciphertext of other parameters
    job = open_job(service).json()["job"]
    other = Client(PRESETS["n8192-l2"], SETTINGS.layout())
    block = Client(PRESETS[SETTINGS.preset], SETTINGS.layout()).encrypt_block(np.zeros((3, 8)), np.eye(3))
    block["forward"] = [other.encrypt(np.zeros(PRESETS["n8192-l2"].slots))] * len(block["forward"])
    headers, body = pack({k: v for k, v in block.items() if k != "count"})
    with api(service, **{"X-Encvit-Job": job, "X-Encvit-Params": params_hash(PRESETS[SETTINGS.preset])}) as http:
        answer = http.put(f"/jobs/{job}/train/0", content=body, headers=headers, params={"count": 3})
        assert answer.status_code == 400 and "CKKS parameters" in answer.json()["error"]
        assert http.get(f"/jobs/{job}").json()["chunks"]["train"] == 0
        assert http.delete(f"/jobs/{job}").status_code == 200
    # limits, named in the answer
    data = tmp_path / "data"
    token = new_token(data, "erin")
    small = Server(data, free_port(), "--max-upload-mb", "1", "--max-jobs", "1")
    try:
        headers = {
            "Authorization": f"Bearer {token}",
            **protocol_headers(params_hash(PRESETS[SETTINGS.preset])),
            "Content-Type": "application/octet-stream",
        }
        with httpx.Client(base_url=small.url, headers=headers, timeout=60) as http:
            big = http.post("/jobs", content=public_keys(), params=SETTINGS.as_dict())
            assert big.status_code == 413 and "--max-upload-mb 1" in big.json()["error"]
    finally:
        small.stop()
    roomy = Server(data, free_port(), "--max-jobs", "1")
    try:
        with httpx.Client(base_url=roomy.url, headers=headers, timeout=60) as http:
            assert http.post("/jobs", content=public_keys(), params=SETTINGS.as_dict()).status_code == 201
            second = http.post("/jobs", content=public_keys(), params=SETTINGS.as_dict())
            assert second.status_code == 429 and "--max-jobs 1" in second.json()["error"]
    finally:
        roomy.stop()


def test_every_route_is_described_and_the_server_refuses_to_expose_itself_without_tls(service):
    paths = httpx.get(service["server"].url + "/openapi.json").json()["paths"]
    assert set(paths) == {
        "/health",
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/{kind}/{index}",
        "/jobs/{job_id}/weights",
        "/jobs/{job_id}/step",
        "/jobs/{job_id}/validation-logits",
        "/jobs/{job_id}/finish",
    }
    import subprocess

    refused = subprocess.run(
        [*ENCVIT, "fhe-serve", "--data", str(service["data"]), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--ssl-certfile" in refused.stderr and "--insecure" in refused.stderr


def test_two_jobs_of_two_tokens_train_at_once_while_health_answers(service, tmp_path):
    url = service["server"].url
    slowest, stop = [0.0], threading.Event()

    def watch():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                start = time.monotonic()
                assert http.get(url + "/health").status_code == 200
                slowest[0] = max(slowest[0], time.monotonic() - start)
                time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        runs = [  # bob's with --keep-on-server: its ciphertexts stay until deleted (alice's go, as by default)
            client(service["features"], url, service["tokens"][name], tmp_path / name, EPOCHS, *extra)
            for name, extra in (("alice", ()), ("bob", ("--keep-on-server",)))
        ]
        for process in runs:
            finish(process)
    finally:
        stop.set()
        watcher.join()
    for name in ("alice", "bob"):
        assert abs(result(tmp_path / name)["encrypted_test_acc"] - service["solo"]["encrypted_test_acc"]) <= 0.5
    assert slowest[0] < 2.0, f"/health took {slowest[0]:.2f} s while two jobs trained"
    kept, gone = (service["data"] / "jobs" / result(tmp_path / name)["server"]["job"] for name in ("bob", "alice"))
    assert any((kept / "store").iterdir()) and any(kept.glob("weights-*"))
    assert [p.name for p in gone.iterdir()] == ["job.json"]
    with api(service, "bob") as http:
        assert http.get(f"/jobs/{kept.name}").json()["status"] == "kept"
        assert http.delete(f"/jobs/{kept.name}").status_code == 200
    assert not kept.exists()


def test_a_missing_token_is_refused_before_any_work(service, tmp_path, monkeypatch):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "ENCVIT_FHE_TOKEN"}
    done = subprocess.run(
        [
            *ENCVIT,
            "fhe-train",
            "--features",
            str(service["features"]),
            "--server",
            service["server"].url,
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and "ENCVIT_FHE_TOKEN" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


# ---- fuzzing every route -----------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402 (the fuzzing part of this module)
from hypothesis import strategies as st  # noqa: E402

ROUTES = [
    ("GET", "/health"),
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/{job}"),
    ("DELETE", "/jobs/{job}"),
    ("PUT", "/jobs/{job}/train/{index}"),
    ("PUT", "/jobs/{job}/validation/{index}"),
    ("PUT", "/jobs/{job}/weights"),
    ("GET", "/jobs/{job}/weights"),
    ("POST", "/jobs/{job}/step"),
    ("GET", "/jobs/{job}/validation-logits"),
    ("POST", "/jobs/{job}/finish"),
]
FUZZ_EXAMPLES = int(os.environ.get("ENCVIT_FUZZ_EXAMPLES", "20"))
TEXT = st.text(max_size=40)
NESTED = st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth)  # deeper than any parser recurses
HUGE = st.integers(1, 3).map(lambda mb: b'{"a": "' + b"x" * (mb << 20) + b'"}')


@pytest.fixture(scope="module")
def fuzzed(service):
    """A token of its own with a job to aim at, and alice's job that no request of the fuzzer may touch."""
    token = new_token(service["data"], "frank")
    service["tokens"]["frank"] = token
    own = open_job(service, "frank").json()["job"]
    victim = open_job(service, "alice").json()["job"]
    with api(service, "alice") as http:
        before = http.get(f"/jobs/{victim}").json()
    yield {"own": own, "victim": victim, "before": before, "token": token}
    with api(service, "alice") as http:
        assert http.get(f"/jobs/{victim}").json() == before  # other jobs are unaffected
        http.delete(f"/jobs/{victim}")
    with api(service, "frank") as http:
        http.delete(f"/jobs/{own}")


VALID_PARAMS = {
    "/jobs": SETTINGS.as_dict(),
    "/jobs/{job}/train/{index}": {"count": 64},
    "/jobs/{job}/weights": {"names": "u,w"},
    "/jobs/{job}/step": {"blocks": "0", "lr": 8.0},
}
PART_NAMES = ["forward", "gradient", "labels", "u.forward", "u.update", "w.update", "w.forward", "block0"]
ASPECTS = ["auth", "job", "index", "headers", "content_type", "body", "params"]


@st.composite
def requests(draw, template: str, fuzz: dict):
    """A request that is valid but for a few aspects (none to three), so that junk reaches every layer."""
    iteration = draw(st.integers(0, 3))
    job, index = fuzz["own"], "0"
    headers = {
        "Authorization": f"Bearer {fuzz['token']}",
        **protocol_headers(params_hash(PRESETS[SETTINGS.preset]), job, iteration),
        "Content-Type": "application/octet-stream",
    }
    frame = draw(
        st.dictionaries(st.sampled_from(PART_NAMES), st.lists(st.binary(max_size=512), max_size=3), max_size=3)
    )
    frame_headers, body = pack(frame)
    headers.update(frame_headers)
    params = dict(VALID_PARAMS.get(template, {}))
    for aspect in draw(st.sets(st.sampled_from(ASPECTS), max_size=3)):
        if aspect == "auth":
            headers["Authorization"] = draw(st.sampled_from(["", "Bearer ", "Basic x", f"Bearer {draw(TEXT)}"]))
        elif aspect == "job":
            job = draw(st.one_of(st.sampled_from([fuzz["victim"], "0" * 16, "f" * 17]), TEXT))
        elif aspect == "index":
            index = draw(st.one_of(st.integers(-5, 10**7).map(str), TEXT))
        elif aspect == "headers":
            for name in draw(
                st.sets(
                    st.sampled_from(
                        [
                            "X-Encvit-Protocol",
                            "X-Encvit-Version",
                            "X-Encvit-Params",
                            "X-Encvit-Job",
                            "X-Encvit-Iteration",
                            "X-Encvit-Parts",
                        ]
                    ),
                    min_size=1,
                )
            ):
                headers[name] = draw(st.one_of(TEXT, st.integers(-3, 10**12).map(str), st.just("forward=1;x=2")))
        elif aspect == "content_type":
            headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "", "multipart/x"]))
        elif aspect == "body":
            body = draw(st.one_of(st.binary(max_size=4096), NESTED, HUGE, st.just(b"")))
        elif aspect == "params":
            params = draw(
                st.dictionaries(
                    st.sampled_from(
                        [
                            "names",
                            "blocks",
                            "lr",
                            "count",
                            "keep",
                            "preset",
                            "features",
                            "classes",
                            "batch_size",
                            "momentum",
                        ]
                    ),
                    st.one_of(TEXT, st.integers(-10, 10**9).map(str), st.just("nan")),
                    max_size=6,
                )
            )
    path = template.format(job=job.replace("/", "%2F") or "x", index=index.replace("/", "%2F") or "0")
    headers = {k: v.encode("utf-8", "replace").decode("latin-1") for k, v in headers.items()}  # HTTP's header bytes
    return path, headers, body, params


@pytest.mark.parametrize("method,template", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_junk_on_every_route_gets_a_one_line_4xx_and_the_server_goes_on(service, fuzzed, method, template):
    url = service["server"].url

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(request=requests(template, fuzzed))
    def check(request):
        path, headers, body, params = request
        with httpx.Client(base_url=url, timeout=60) as http:
            try:
                answer = http.request(method, path, content=body, headers=headers, params=params)
            except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
                return  # the client library itself refuses to send this: nothing reached the server
        assert answer.status_code < 500, (method, path, answer.status_code, answer.text[:300])
        if answer.status_code >= 400:
            error = answer.json()["error"]
            assert error and "\n" not in error
        assert httpx.get(url + "/health", timeout=30).status_code == 200

    check()
