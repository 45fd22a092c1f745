"""`llm-interface pull ORG/NAME[@REVISION]` and `llm-interface rm NAME`: models from the Hugging Face Hub.

`pull` downloads a repository with huggingface_hub's `snapshot_download` (progress bars; `HF_TOKEN` for gated
models and `HF_ENDPOINT` for a mirror are read by huggingface_hub itself) into `LLM_MODELS_DIR/.NAME.partial`,
then renames that to `LLM_MODELS_DIR/NAME`. The workers' scan skips hidden folders, so it never sees half a
model; a pull run again after an interruption resumes in the partial folder (finished files are not fetched
again). Only what the workers load is fetched: configs, safetensors weights, tokenizer and chat-template files;
pickle weights only with LLM_ALLOW_PICKLE_WEIGHTS, and only in folders without safetensors. Then the workers
are told to rescan (`rescan` on the admin stream, worker/admin.py) and the model's detected type and planned
placement are printed. `rm` deletes a model folder (and an unfinished pull of it) and tells the workers too.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import RedisError

from cli.healthcheck import redis_url
from common import keys
from common.discovery import LoadPolicy, is_safe_model_id, scan_models
from common.settings import Settings

# What the workers read: configs (also of sentence-transformers modules such as 1_Pooling/), safetensors weights,
# tokenizers (tokenizer.json, sentencepiece .model, BPE vocab/merges, tiktoken), chat templates; card and licence.
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*", "*.tiktoken",
                  "README.md", "LICENSE*")
REMOTE_CODE_PATTERNS = ("*.py",)  # a model's own modelling code: only with LLM_TRUST_REMOTE_CODE
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Never: the weights again in other formats (Meta's original/, ONNX, OpenVINO, Core ML) and training leftovers.
IGNORE_PATTERNS = ("original/*", "onnx/*", "openvino/*", "coreml/*", "*.onnx", "*.onnx_data", "checkpoint-*",
                   "*optimizer.pt", "*scheduler.pt", "*rng_state*.pth", "*training_args.bin")
SOURCE_FILE = "llm-interface-source"  # in the partial folder's .cache/: the repository it is a download of
MIB = 2**20


class PullError(Exception):
    """Why a pull or rm failed, in one line. `code` is the exit status; `resumable`: keep the partial folder."""

    def __init__(self, message: str, code: int = 1, resumable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.resumable = resumable


@dataclass(frozen=True)
class RepoRef:
    repo_id: str
    revision: str | None
    name: str  # the model folder, and so the model id

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class Selection:
    files: list[str]  # what to download, repository paths
    refused: list[str]  # pickle weights left out because LLM_ALLOW_PICKLE_WEIGHTS is off


def parse_ref(spec: str, name: str | None = None) -> RepoRef:
    """`ORG/NAME[@REVISION]` (a legacy id without ORG too); the folder is `name` or the repository's NAME."""
    repo_id, at, revision = spec.partition("@")
    parts = repo_id.split("/")
    if len(parts) > 2 or not all(parts) or (at and not revision):
        raise PullError(f"{spec!r} is not a repository: expected ORG/NAME[@REVISION]", code=2)
    folder = name or parts[-1]
    if not is_safe_model_id(folder):
        raise PullError(f"{folder!r} cannot be a model folder name (no '/', '\\', '%' or leading '.')", code=2)
    return RepoRef(repo_id, revision or None, folder)


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(path, p) for p in patterns)


def _folder(path: str) -> str:
    return str(PurePosixPath(path).parent)


def _is_pickle(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def _sample(paths: Sequence[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def select_files(repo_id: str, files: Sequence[str], policy: LoadPolicy) -> Selection:
    """The files of a repository to fetch; a PullError when it has no weights the workers may load."""
    candidates = [f for f in files if not _matches(f, IGNORE_PATTERNS)]
    safetensors = [f for f in candidates if f.endswith(".safetensors")]
    pickle = [f for f in candidates if _is_pickle(f)]
    if not safetensors and not pickle:
        raise PullError(f"{repo_id} has no weights the workers can load (safetensors, or pickle .bin/.pt with "
                        f"LLM_ALLOW_PICKLE_WEIGHTS=true); its files: {_sample(sorted(files))}")
    if not safetensors and not policy.allow_pickle_weights:
        raise PullError(f"{repo_id} ships only pickle weights ({_sample(pickle)}), which can run code when loaded; "
                        "set LLM_ALLOW_PICKLE_WEIGHTS=true to allow them")
    with_safetensors = {_folder(f) for f in safetensors}
    plain = {_folder(f) for f in safetensors if not PurePosixPath(f).name.startswith("consolidated")}
    wanted = ALLOW_PATTERNS + (REMOTE_CODE_PATTERNS if policy.trust_remote_code else ())
    chosen = [f for f in candidates if _matches(f, wanted)
              # Mistral's repositories hold the weights twice: consolidated*.safetensors beside the HF shards
              and not (PurePosixPath(f).name.startswith("consolidated") and _folder(f) in plain)]
    lone_pickle = [f for f in pickle if _folder(f) not in with_safetensors]  # a safetensors copy is fetched else
    if policy.allow_pickle_weights:
        return Selection(sorted({*chosen, *lone_pickle}), [])
    return Selection(sorted(chosen), lone_pickle)


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection and protocol errors of huggingface_hub's HTTP client (httpx2 in 2.x, httpx in 1.x), and OSError."""
    found: list[type[Exception]] = [OSError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            found.append(importlib.import_module(module).TransportError)
    return tuple(found)


@contextlib.contextmanager
def _hub_errors(ref: RepoRef) -> Iterator[None]:
    """huggingface_hub's exceptions as one-line PullErrors (resumable: worth running again as it is)."""
    from huggingface_hub import constants, errors

    endpoint = constants.ENDPOINT
    try:
        yield
    except errors.GatedRepoError:
        raise PullError(f"{ref.repo_id} is gated on {endpoint}: accept its terms there and set HF_TOKEN to a token "
                        "of that account") from None
    except errors.RevisionNotFoundError:
        raise PullError(f"{ref.repo_id} has no revision {ref.revision or 'main'!r} on {endpoint}") from None
    except errors.RepositoryNotFoundError:
        raise PullError(f"{ref.repo_id}: no such repository on {endpoint} (a private one needs HF_TOKEN)") from None
    except errors.OfflineModeIsEnabled:
        raise PullError("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: unset it to download from the hub") from None
    except errors.HFValidationError as exc:
        raise PullError(f"{ref.repo_id!r} is not a valid repository id: {exc}", code=2) from None
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PullError(f"{ref}: {endpoint} answered {status} ({first})", resumable=status >= 500) from None
    except _transport_errors() as exc:
        raise PullError(f"{ref}: {type(exc).__name__}: {exc}", resumable=True) from None


def resolve(ref: RepoRef) -> tuple[str, list[str]]:
    """The commit the revision names now, and the repository's files at that commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    with _hub_errors(ref):
        info = api.model_info(ref.repo_id, revision=ref.revision)
        if info.sha is None:
            raise PullError(f"{ref}: the hub did not say which commit it is")
        if info.siblings is not None:
            return info.sha, [s.rfilename for s in info.siblings]
        return info.sha, api.list_repo_files(ref.repo_id, revision=info.sha)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    """Delete a folder, file or symbolic link (a link itself, never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _partial_dir(models_dir: Path, ref: RepoRef) -> Path:
    """`.NAME.partial`: an interrupted pull of the same repository goes on there; anything else is cleared."""
    partial = models_dir / f".{ref.name}.partial"
    marker = partial / ".cache" / SOURCE_FILE
    if _exists(partial) and (partial.is_symlink() or not marker.is_file() or marker.read_text() != ref.repo_id):
        _remove(partial)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(ref.repo_id)
    return partial


def download(ref: RepoRef, commit: str, files: Sequence[str], partial: Path) -> None:
    """Fetch exactly `files` at `commit` into `partial`, resuming what an earlier run left there."""
    from huggingface_hub import snapshot_download

    literal = [re.sub(r"([*?\[])", r"[\1]", f) for f in files]  # file names as fnmatch patterns
    with _hub_errors(ref):
        snapshot_download(ref.repo_id, revision=commit, local_dir=partial, allow_patterns=literal)


def _install(partial: Path, target: Path, force: bool) -> None:
    """Rename the finished download into place (replacing `target` with --force)."""
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, and our marker
    if not _exists(target):
        partial.rename(target)
        return
    if not force:
        raise PullError(f"{target} appeared while downloading; the download stays in {partial} (--force replaces)",
                        resumable=True)
    old = target.with_name(f".{target.name}.old")
    _remove(old)
    target.rename(old)  # a symbolic link is moved itself, never followed
    partial.rename(target)
    _remove(old)


def _folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()) / MIB


def _fetch(settings: Settings, ref: RepoRef, force: bool) -> Path:
    """Resolve, check, download and install one repository; the model folder."""
    root = settings.models_dir
    target = root / ref.name
    if _exists(target) and not force:
        raise PullError(f"{target} already exists (--force replaces it, `llm-interface rm {ref.name}` removes it)")
    commit, files = resolve(ref)
    selection = select_files(ref.repo_id, files, settings.load_policy)
    if selection.refused:
        print(f"not fetched: {_sample(selection.refused)} (pickle weights without a safetensors copy, which the "
              "model may need; LLM_ALLOW_PICKLE_WEIGHTS=true fetches them)", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    fresh = not _exists(root / f".{ref.name}.partial")
    partial = _partial_dir(root, ref)
    print(f"pulling {ref} (commit {commit[:12]}, {len(selection.files)} files) into {target}", flush=True)
    try:
        download(ref, commit, selection.files, partial)
    except PullError as exc:
        if not exc.resumable and fresh:  # nothing worth keeping: leave nothing behind
            _remove(partial)
            raise
        raise PullError(f"{exc}; run the same command again to resume (kept {partial})") from None
    _install(partial, target, force)
    return target


def _where(url: str) -> str:
    """A Redis URL without its password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path or url


def request_rescan(settings: Settings, model_id: str) -> str:
    """Ask the running workers to read the models folder again now; the line to print."""
    url = redis_url(settings)  # LLM_REDIS_URL, else the embedded Redis of a running `serve`, else the default
    redis = Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        redis.xadd(keys.ADMIN_STREAM, {"action": "rescan", "model": model_id}, maxlen=keys.ADMIN_STREAM_MAXLEN,
                   approximate=True)
    except (RedisError, OSError) as exc:
        return (f"Redis at {_where(url)} is unreachable ({exc}); running workers pick the change up at their "
                f"next scan of the models folder (every {settings.models_rescan_s:g} s)")
    finally:
        redis.close()
    return f"told the workers to rescan the models folder (Redis at {_where(url)})"


def describe(settings: Settings, model_id: str) -> int:
    """Print the model's detected type and planned placement; 1 when the workers will not serve it."""
    catalog = scan_models(settings.models_dir, settings.load_policy)
    info = catalog.models.get(model_id)
    if info is None:
        why = next((p.error for p in catalog.problems if p.id == model_id), "not found by the folder scan")
        print(f"the workers will not serve {model_id}: {why}", file=sys.stderr)
        return 1
    print(f"type: {info.type} ({info.architecture or 'no architecture in config.json'}), "
          f"{info.size_bytes / MIB:.1f} MiB of weights")
    try:
        from worker.plan import plan_report, render
    except ImportError as exc:  # an install without the worker's packages
        print(f"placement: not planned here ({exc})")
        return 0
    report = plan_report(settings)
    print(render({**report, "models": [r for r in report["models"] if r["id"] == model_id], "problems": []}))
    return 0


def pull(settings: Settings, spec: str, name: str | None = None, force: bool = False) -> int:
    """`llm-interface pull`: the exit status."""
    try:
        ref = parse_ref(spec, name)
        target = _fetch(settings, ref, force)
    except PullError as exc:
        print(f"llm-interface pull: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"\nllm-interface pull: interrupted; run the same command again to resume ({spec})", file=sys.stderr)
        return 130
    print(f"pulled {ref} into {target} ({_folder_mib(target):.1f} MiB)")
    print(request_rescan(settings, ref.name))
    return describe(settings, ref.name)


def remove(settings: Settings, name: str) -> int:
    """`llm-interface rm`: delete a model folder (a symbolic link: the link) and an unfinished pull of it."""
    root = settings.models_dir
    if not is_safe_model_id(name):
        print(f"llm-interface rm: {name!r} is not a model name (a folder directly in {root})", file=sys.stderr)
        return 2
    target, partial = root / name, root / f".{name}.partial"
    if target.is_symlink() and not target.resolve().is_relative_to(root.resolve()):
        print(f"llm-interface rm: {target} is a symbolic link to {target.resolve()}, outside the models folder; "
              "remove the link yourself", file=sys.stderr)
        return 1
    if not _exists(target) and not _exists(partial):
        print(f"llm-interface rm: no model {name} in {root}", file=sys.stderr)
        return 1
    for path in (target, partial):
        if _exists(path):
            _remove(path)
            print(f"removed {path}" + (" (an unfinished pull)" if path == partial else ""))
    print(request_rescan(settings, name))
    return 0

