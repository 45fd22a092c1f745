"""Drill 16, deep: schemathesis over /openapi.json against the running stack, with the `model` of every request
body (and of /v1/models/{id}) drawn from the models the workers really serve, so generated requests reach the
worker instead of stopping at a 404. Zero server errors, zero schema violations, zero dropped connections.
Admin routes keep random ids: real ones would load and pin the shared stack's models."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.stack import Stack

INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v2/rerank", "/rerank")
BODIES = {"ChatCompletionRequest": "chat", "CompletionRequest": "chat", "EmbeddingRequest": "embedding",
          "RerankRequest": "reranker"}


def with_real_models(spec: dict[str, Any], ids: dict[str, list[str]]) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    for name, model_type in BODIES.items():
        real = {"type": "string", "enum": ids[model_type]}
        schemas[name]["properties"]["model"] = {"anyOf": [real, {"type": "null"}]} if name == "RerankRequest" else real
    for parameter in spec["paths"]["/v1/models/{model_id}"]["get"]["parameters"]:
        if parameter["name"] == "model_id":
            parameter["schema"] = {"type": "string", "enum": sorted(i for group in ids.values() for i in group)}
    return spec


def steered(spec: dict[str, Any]) -> dict[str, Any]:
    """The same request shapes, generated inside what a worker then serves: no unknown fields (refused with a
    400 before any worker sees them), small token counts and n, non-empty messages and documents."""
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    for schema in schemas.values():
        if schema.get("additionalProperties") is True:
            schema["additionalProperties"] = False
        props = schema.get("properties", {})
        for name, bound in (("max_tokens", 16), ("max_completion_tokens", 16), ("n", 2), ("dimensions", 32),
                            ("top_n", 8), ("top_k", 8), ("max_tokens_per_doc", 64)):
            if name in props:
                props[name] = {"type": "integer", "minimum": 1, "maximum": bound}
    for name in ("echo", "suffix", "best_of"):
        schemas["CompletionRequest"]["properties"].pop(name)
    schemas["TextPart"]["properties"]["type"] = {"type": "string", "enum": ["text"]}
    schemas["ChatCompletionRequest"]["properties"]["messages"]["minItems"] = 1
    rerank = schemas["RerankRequest"]
    rerank["properties"].pop("texts")
    rerank["required"] = ["query", "documents"]
    rerank["properties"]["documents"] = {"type": "array", "minItems": 1, "maxItems": 8,
                                         "items": {"type": "string", "minLength": 1}}
    rerank["properties"]["query"] = {"type": "string", "minLength": 1}
    return spec


def run_schemathesis(stack: Stack, spec: dict[str, Any], folder: Path, *options: str) -> str:
    path = folder / f"openapi-{len(list(folder.iterdir()))}.json"
    path.write_text(json.dumps(spec))
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [str(st), "--no-color", "run", str(path), "--url", stack.base_url, "--checks",
         "not_a_server_error,response_schema_conformance", "--request-timeout", "120", "--seed", "1", *options],
        capture_output=True, text=True, timeout=1200, cwd=folder)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " 0 passed" not in result.stdout
    return result.stdout


def answered_ok(stack: Stack, route: str) -> int:
    return len(re.findall(rf"POST {re.escape(route)} 200 ", (stack.logdir / "api.log").read_text(errors="replace")))


def test_schemathesis_with_real_model_ids_finds_no_server_errors(stack: Stack, tmp_path: Path) -> None:
    spec = httpx.get(f"{stack.base_url}/openapi.json", timeout=30).json()
    ids: dict[str, list[str]] = {"chat": [], "embedding": [], "reranker": []}
    for card in httpx.get(f"{stack.base_url}/v1/models", timeout=30).json()["data"]:
        ids[card["type"]].append(card["id"])
    real = with_real_models(spec, ids)
    # every operation, valid and invalid data alike
    run_schemathesis(stack, real, tmp_path, "--max-examples", "25", "--exclude-path-regex", "^/v1/admin/")
    # the inference routes, valid data inside what the worker serves: these requests do reach a worker
    before = {route: answered_ok(stack, route) for route in INFERENCE}
    run_schemathesis(stack, steered(real), tmp_path, "--mode", "positive", "--max-examples", "30",
                     "--include-path-regex", "|".join(f"^{re.escape(r)}$" for r in INFERENCE))
    for route in INFERENCE:
        assert answered_ok(stack, route) > before[route], f"no generated request to {route} reached a worker"
