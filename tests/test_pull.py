"""`llm-interface pull` and `rm`, run as the real command against a stand-in for the Hugging Face Hub
(tests/fake_hub.py, on a local port: `HF_ENDPOINT` points there, `HF_TOKEN` opens its gated repository).

A fresh download (only the files the workers load; type and placement printed; workers told through Redis),
a resumed one (the first run fails on the weights, the second fetches only what is missing and resumes a
broken transfer with a Range request), a missing repository or revision (one line, nothing left behind),
a gated repository without a token, pickle-only weights (refused unless LLM_ALLOW_PICKLE_WEIGHTS), `rm`;
a real worker process whose next periodic scan is an hour away sees a pull and an rm at once (the `rescan`
admin command); the file selection and AdminCommands' `rescan` as units.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgpack
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from cli.pull import PullError, select_files
from common import keys
from common.discovery import LoadPolicy
from tests.fake_hub import FakeHub
from tests.stack import ROOT, RedisServer, free_port, wait_until
from worker.admin import AdminCommands
from worker.scheduler import Scheduler

EMBED = "test-org/tiny-embed"  # gated: HF_TOKEN opens it
PICKLE = "test-org/tiny-pickle"
TOKEN = "hf_stand_in_token"
BERT_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512,
               "vocab_size": 1024, "torch_dtype": "float32"}
MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]


def _safetensors(n_floats: int, seed: int) -> bytes:
    """A valid safetensors file of one float32 tensor of random bits."""
    data = random.Random(seed).randbytes(4 * n_floats)
    header = json.dumps({"embeddings.word_embeddings.weight": {
        "dtype": "F32", "shape": [n_floats // 64, 64], "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def _common_files() -> dict[str, bytes]:
    return {"config.json": json.dumps(BERT_CONFIG).encode(), "modules.json": json.dumps(MODULES).encode(),
            "1_Pooling/config.json": json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True}
                                                ).encode(),
            "tokenizer_config.json": b'{"do_lower_case": true, "model_max_length": 512}',
            "vocab.txt": "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *map(str, range(100))]).encode(),
            "README.md": b"# tiny\n"}


def embed_files() -> dict[str, bytes]:
    """Eight files the workers load (one for each of snapshot_download's threads), four they do not."""
    wanted = {**_common_files(), "tokenizer.json": b'{"version": "1.0", "model": {"type": "WordPiece"}}',
              # 11 MiB: more than one of huggingface_hub's 10 MiB download chunks, so a broken transfer resumes
              "model.safetensors": _safetensors(11 * 2**18, seed=1)}
    unwanted = {"pytorch_model.bin": random.Random(2).randbytes(4096), "onnx/model.onnx": b"onnx",
                "flax_model.msgpack": b"flax", ".gitattributes": b"*.safetensors filter=lfs\n"}
    return wanted | unwanted


WANTED = sorted(set(embed_files()) - {"pytorch_model.bin", "onnx/model.onnx", "flax_model.msgpack", ".gitattributes"})


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: the worker it starts must not join the session stack's cluster."""
    server = RedisServer(tmp_path_factory.mktemp("pull-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add(EMBED, embed_files(), revisions=("main", "v1"), token=TOKEN)
    fake.add(PICKLE, {**_common_files(), "pytorch_model.bin": random.Random(3).randbytes(8192)})
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """The command's environment: none of the caller's HF_*, LLM_*, TRANSFORMERS_* (conftest sets them offline)."""
    hub.requests.clear()
    hub.faults.clear()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LLM_", "TRANSFORMERS_"))}
    return base | {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN,
                   "LLM_MODELS_DIR": str(tmp_path / "models"), "LLM_DEVICE": "cpu", "LLM_DEFAULT_MODELS": "false",
                   "LLM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def rescans(url: str, model: str) -> int:
    client = Redis.from_url(url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.ADMIN_STREAM))
    finally:
        client.close()
    return sum(1 for _, f in entries if f == {b"action": b"rescan", b"model": model.encode()})


def test_fresh_pull_lands_the_model_and_tells_the_workers(hub: FakeHub, env: dict[str, str],
                                                          redis_server: RedisServer) -> None:
    env["LLM_REDIS_URL"] = redis_server.url
    models = Path(env["LLM_MODELS_DIR"])
    before = rescans(redis_server.url, "tiny-embed")
    done = cli(env, "pull", EMBED)
    assert done.returncode == 0, done.stderr
    folder = models / "tiny-embed"
    assert listing(folder) == WANTED  # no pickle copy, ONNX, Flax; no huggingface_hub bookkeeping (.cache)
    files = embed_files()
    assert all((folder / name).read_bytes() == files[name] for name in WANTED)
    assert sorted(p.name for p in models.iterdir()) == ["tiny-embed"]  # the .partial folder is gone
    assert "type: embedding (BertModel)" in done.stdout
    assert any(line.startswith("tiny-embed") and " cpu " in line for line in done.stdout.splitlines()), done.stdout
    assert "told the workers to rescan" in done.stdout
    assert rescans(redis_server.url, "tiny-embed") == before + 1
    assert {r.authorization for r in hub.seen(EMBED)} == {f"Bearer {TOKEN}"}  # HF_TOKEN, read by huggingface_hub

    hub.requests.clear()
    again = cli(env, "pull", EMBED)
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr
    assert hub.seen(EMBED) == []  # refused before asking the hub
    (folder / "stale.txt").write_text("from the old copy")
    forced = cli(env, "pull", f"{EMBED}@v1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert listing(folder) == WANTED and sorted(p.name for p in models.iterdir()) == ["tiny-embed"]
    assert any(r.path == "api/revision/v1" for r in hub.seen(EMBED))


def worker_models(url: str, worker_id: str) -> list[str] | None:
    """The model ids a worker's heartbeat publishes (None: no heartbeat)."""
    client = Redis.from_url(url)
    try:
        raw = cast(bytes | None, client.get(keys.worker_key(worker_id)))
    finally:
        client.close()
    return None if raw is None else [m["id"] for m in msgpack.unpackb(raw)["models"]]


def test_a_running_worker_sees_a_pull_and_an_rm_at_once(hub: FakeHub, env: dict[str, str],
                                                         redis_server: RedisServer, tmp_path: Path) -> None:
    env["LLM_REDIS_URL"] = redis_server.url
    Path(env["LLM_MODELS_DIR"]).mkdir()
    worker_id = f"pull-test-{os.getpid()}"
    # Its periodic scan is an hour away: only the `rescan` admin command can show it the new folder.
    worker_env = env | {"LLM_WORKER_ID": worker_id, "LLM_MODELS_RESCAN_S": "3600", "LLM_WORKER_HEARTBEAT_S": "0.2"}
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=worker_env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: worker_models(redis_server.url, worker_id) == [], 60, "the worker's first heartbeat")
        assert cli(env, "pull", EMBED).returncode == 0
        wait_until(lambda: worker_models(redis_server.url, worker_id) == ["tiny-embed"], 30, "the worker's rescan")
        assert cli(env, "rm", "tiny-embed").returncode == 0
        wait_until(lambda: worker_models(redis_server.url, worker_id) == [], 30, "the rescan after rm")
    finally:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=30)
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "admin: rescan tiny-embed" in (tmp_path / "worker.log").read_text()


def test_an_interrupted_pull_resumes(hub: FakeHub, env: dict[str, str]) -> None:
    models = Path(env["LLM_MODELS_DIR"])
    # First run: the weights answer 500. Second run: their transfer breaks half-way once, then resumes (Range).
    hub.fail(EMBED, "model.safetensors", "500", "truncate")
    first = cli(env, "pull", EMBED)
    assert first.returncode == 1
    assert "run the same command again to resume" in first.stderr, first.stderr
    partial = models / ".tiny-embed.partial"
    finished = [f for f in listing(partial) if not f.startswith(".cache/")]
    assert finished and "model.safetensors" not in finished
    assert not (models / "tiny-embed").exists()  # the workers never see half a model

    hub.requests.clear()
    second = cli(env, "pull", EMBED)
    assert second.returncode == 0, second.stderr
    folder = models / "tiny-embed"
    files = embed_files()
    assert listing(folder) == WANTED
    assert all((folder / name).read_bytes() == files[name] for name in WANTED)
    fetched = {r.path for r in hub.seen(EMBED) if not r.path.startswith("api/")}
    assert not fetched & set(finished)  # what the first run finished is not fetched again
    ranges = [r.range for r in hub.seen(EMBED, "GET") if r.path == "model.safetensors" and r.range]
    assert ranges == [f"bytes={10 * 2**20}-"]  # the first 10 MiB chunk had arrived when the transfer broke
    assert not partial.exists()


@pytest.mark.parametrize(("spec", "message"), [
    ("test-org/no-such-model", "test-org/no-such-model: no such repository"),
    (f"{EMBED}@no-such-branch", f"{EMBED} has no revision 'no-such-branch'"),
])
def test_a_missing_repository_or_revision_is_one_clear_line(env: dict[str, str], spec: str, message: str) -> None:
    done = cli(env, "pull", spec)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"llm-interface pull: {message} on {env['HF_ENDPOINT']}"
                                                + (" (a private one needs HF_TOKEN)" if "repository" in message
                                                   else "")]
    models = Path(env["LLM_MODELS_DIR"])
    assert not models.exists() or list(models.iterdir()) == []


def test_a_gated_repository_needs_hf_token(hub: FakeHub, env: dict[str, str]) -> None:
    del env["HF_TOKEN"]
    done = cli(env, "pull", EMBED)
    assert done.returncode == 1
    assert "gated" in done.stderr and "HF_TOKEN" in done.stderr, done.stderr
    assert list(Path(env["LLM_MODELS_DIR"]).iterdir()) == []  # the partial folder is removed: nothing to resume


def test_pickle_only_weights_need_the_setting(hub: FakeHub, env: dict[str, str]) -> None:
    models = Path(env["LLM_MODELS_DIR"])
    refused = cli(env, "pull", PICKLE)
    assert refused.returncode == 1
    assert "only pickle weights" in refused.stderr and "LLM_ALLOW_PICKLE_WEIGHTS=true" in refused.stderr
    assert not models.exists() or list(models.iterdir()) == []
    assert [r for r in hub.seen(PICKLE) if not r.path.startswith("api")] == []  # nothing downloaded

    allowed = cli(env | {"LLM_ALLOW_PICKLE_WEIGHTS": "true"}, "pull", PICKLE)
    assert allowed.returncode == 0, allowed.stderr
    assert "pytorch_model.bin" in listing(models / "tiny-pickle")
    assert "type: embedding" in allowed.stdout
    assert "unreachable" in allowed.stdout and "next scan" in allowed.stdout  # no Redis: the periodic scan finds it


def test_rm_removes_a_model_and_refuses_what_is_not_one(env: dict[str, str], redis_server: RedisServer,
                                                        tmp_path: Path) -> None:
    env["LLM_REDIS_URL"] = redis_server.url
    models = Path(env["LLM_MODELS_DIR"])
    (models / "gone" / "1_Pooling").mkdir(parents=True)
    (models / "gone" / "config.json").write_text("{}")
    (models / ".gone.partial").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (models / "linked-out").symlink_to(outside, target_is_directory=True)
    before = rescans(redis_server.url, "gone")
    done = cli(env, "rm", "gone")
    assert done.returncode == 0, done.stderr
    assert not (models / "gone").exists() and not (models / ".gone.partial").exists()
    assert rescans(redis_server.url, "gone") == before + 1
    for name in ("../outside", "a/b", ".."):
        refused = cli(env, "rm", name)
        assert refused.returncode == 2 and "not a model name" in refused.stderr
    linked = cli(env, "rm", "linked-out")
    assert linked.returncode == 1 and "outside the models folder" in linked.stderr
    assert (models / "linked-out").is_symlink() and outside.is_dir()
    missing = cli(env, "rm", "never-there")
    assert missing.returncode == 1 and "no model never-there" in missing.stderr


def test_select_files_fetches_what_the_workers_load() -> None:
    files = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "consolidated.safetensors", "params.json", "tokenizer.model",
             "pytorch_model.bin", "original/consolidated.00.pth", "onnx/model.onnx", "modeling_x.py",
             "2_Dense/pytorch_model.bin", "2_Dense/config.json", "checkpoint-500/model.safetensors",
             "optimizer.pt", "chat_template.jinja", "qwen.tiktoken"]
    chosen = select_files("o/m", files, LoadPolicy())
    assert chosen.files == ["2_Dense/config.json", "chat_template.jinja", "config.json",
                            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                            "model.safetensors.index.json", "params.json", "qwen.tiktoken", "tokenizer.model"]
    assert chosen.refused == ["2_Dense/pytorch_model.bin"]  # no safetensors copy of it, and pickle is off
    trusting = select_files("o/m", files, LoadPolicy(trust_remote_code=True, allow_pickle_weights=True))
    assert set(trusting.files) - set(chosen.files) == {"modeling_x.py", "2_Dense/pytorch_model.bin"}
    with pytest.raises(PullError, match="only pickle weights"):
        select_files("o/m", ["config.json", "pytorch_model.bin", "training_args.bin"], LoadPolicy())
    with pytest.raises(PullError, match="no weights"):
        select_files("o/m", ["config.json", "model.gguf"], LoadPolicy(allow_pickle_weights=True))


class _Scheduler:
    def set_pins(self, pins: set[str]) -> None:
        self.pins = pins


def test_the_rescan_admin_command_rescans_at_once(redis_server: RedisServer) -> None:
    calls: list[str] = []

    async def run() -> None:
        redis = AsyncRedis.from_url(redis_server.url)
        try:
            admin = AdminCommands(redis, cast(Scheduler, _Scheduler()), (), rescan=lambda: calls.append("rescan"))
            newest = await redis.xrevrange(keys.ADMIN_STREAM, count=1)
            admin._last_id = newest[0][0].decode() if newest else "0-0"  # not a clock: what is there is old
            await admin.apply()
            assert calls == []
            fields: dict[Any, Any] = {"action": "rescan", "model": "m"}
            await redis.xadd(keys.ADMIN_STREAM, fields)
            await admin.apply()
            assert calls == ["rescan"]
            await admin.apply()  # read once
            assert calls == ["rescan"]
        finally:
            await redis.aclose()

    asyncio.run(run())
