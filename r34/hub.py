"""Downloads of published weights into torch's hub cache, the way torchvision does them, without torch.

Files land in `$TORCH_HOME/hub/checkpoints` (default `~/.cache/torch/hub/checkpoints`, `$XDG_CACHE_HOME/torch` when
that is set: torch.hub's rules), so a file torchvision downloaded is reused here and the other way round. A download
streams into a temporary file beside the target, hashing as it goes, and is renamed into place only when its sha256
starts with the prefix in its name; a wrong hash, a cut connection or an interrupt leaves nothing that looks valid.
`R34_WEIGHTS_MIRROR` replaces torchvision's URL root (a mirror, or a local server).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from r34.weights import ENUMS, Weights, WeightsError, get_weights

MIRROR_VARIABLE = "R34_WEIGHTS_MIRROR"
CHUNK = 1 << 20


def hub_dir() -> Path:
    """torch.hub.get_dir(): $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home is None:
        torch_home = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(torch_home).expanduser() / "hub"


def checkpoint_path(entry: Weights) -> Path:
    """Where torchvision keeps `entry`'s file."""
    return hub_dir() / "checkpoints" / entry.file_name


def url_of(entry: Weights) -> str:
    mirror = os.environ.get(MIRROR_VARIABLE)
    return (mirror.rstrip("/") + "/" + entry.file_name) if mirror else entry.url


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(entry: Weights, progress: bool = True, timeout: float = 60.0) -> Path:
    """`entry`'s file in the hub cache, downloaded once (a cached file is used as it is, as torchvision does)."""
    target = checkpoint_path(entry)
    if target.is_file():
        return target
    url = url_of(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (an https/http URL by design)
            except (urllib.error.URLError, OSError) as e:
                raise WeightsError(
                    f"cannot download {entry} from {url} ({getattr(e, 'reason', e)}). Offline, put the file there by "
                    f"hand: {target} (the cache moves with $TORCH_HOME; a mirror: ${MIRROR_VARIABLE}=URL_ROOT)"
                ) from None
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}",
                          disable=not progress) as bar:
                    received = 0
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                if total is not None and received != total:
                    raise WeightsError(f"download of {url} stopped after {received} of {total} bytes; nothing was "
                                       "saved, try again")
        found = digest.hexdigest()
        if not found.startswith(entry.sha256_prefix):
            raise WeightsError(f"{url}: sha256 {found[:16]}... does not start with {entry.sha256_prefix} (the prefix "
                               f"in the file name); the file was not saved")
        os.replace(partial, target)
    except BaseException as e:
        Path(partial).unlink(missing_ok=True)
        if isinstance(e, (ConnectionError, TimeoutError, urllib.error.URLError, http.client.IncompleteRead)):
            raise WeightsError(f"download of {url} was cut off ({type(e).__name__}: {e}); nothing was saved, try "
                               "again") from None
        raise
    return target




@dataclasses.dataclass(frozen=True)
class Resolved:
    """Where a weights source is on disk, and its catalogue entry when it is torchvision's."""

    path: Path
    entry: Weights | None = None
    description: str = ""


PREFIXES = ("torchvision:", "timm:", "hf:")


def is_catalogue_name(spec: object, builder: str | None = None) -> bool:
    """torchvision's weights: an entry, `torchvision:...`, `NAME_Weights.X`, or a bare entry name of `builder`."""
    if isinstance(spec, Weights):
        return True
    text = str(spec)
    return (text.startswith("torchvision:") or text.split(".", 1)[0] in ENUMS
            or (builder is not None and text in ("DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2")))


def is_source_name(spec: object) -> bool:
    """A hub name (torchvision:..., timm:..., hf:..., NAME_Weights.X) rather than a path on disk."""
    return is_catalogue_name(spec) or str(spec).startswith(PREFIXES)


def resolve(spec: str | Path | Weights, builder: str | None = None, progress: bool = True) -> Resolved:
    """A local weights file or directory for `spec`:
    - a catalogue entry or name (`ResNet50_Weights.IMAGENET1K_V2`, `torchvision:resnet50[.NAME]`, `IMAGENET1K_V2`
      with `builder`): torchvision's file in the hub cache, downloaded once (`fetch`);
    - `timm:NAME` (e.g. `timm:resnet50.a1_in1k`): timm's `model.safetensors` from the Hugging Face cache, downloaded
      with `huggingface_hub` when it is installed (the `hub` extra);
    - `hf:REPO` (e.g. `hf:microsoft/resnet-50`) or `hf:/a/snapshot/dir`: a transformers snapshot, likewise;
    - anything else: a path on disk."""
    if is_catalogue_name(spec, builder):
        entry = get_weights(spec, builder)
        return Resolved(fetch(entry, progress), entry, str(entry))
    text = str(spec)
    if text.startswith("timm:"):
        name = text[len("timm:"):]
        return Resolved(_hub_file(f"timm/{name}", "model.safetensors", text), None, text)
    if text.startswith("hf:"):
        repo = text[len("hf:"):]
        if Path(repo).expanduser().is_dir():
            return Resolved(Path(repo).expanduser(), None, text)
        return Resolved(_hub_snapshot(repo, text), None, text)
    path = Path(spec).expanduser()
    if not path.exists():
        raise WeightsError(f"{spec}: no such file or directory (weights are a path, torchvision:BUILDER[.NAME], "
                           "NAME_Weights.NAME, timm:NAME or hf:REPO)")
    return Resolved(path, None, str(path))


def _hf_hub():
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


def _hub_file(repo: str, filename: str, spec: str) -> Path:
    hub = _hf_hub()
    if hub is None:
        raise WeightsError(f"{spec}: downloading from the Hugging Face hub needs huggingface_hub (pip install -e "
                           f"'.[hub]'); or download {repo}'s {filename} yourself and pass its path")
    try:
        return Path(hub.hf_hub_download(repo, filename))
    except Exception as e:  # offline, missing repository: the hub client names it
        raise WeightsError(f"{spec}: cannot get {filename} of {repo} from the Hugging Face hub ({type(e).__name__}: "
                           f"{e}); pass a local path instead") from None


def _hub_snapshot(repo: str, spec: str) -> Path:
    hub = _hf_hub()
    if hub is None:
        raise WeightsError(f"{spec}: downloading from the Hugging Face hub needs huggingface_hub (pip install -e "
                           "'.[hub]'); or pass hf:/path/to/a/snapshot (config.json and model.safetensors)")
    try:
        return Path(hub.snapshot_download(repo, allow_patterns=["config.json", "*.safetensors", "*.bin"]))
    except Exception as e:
        raise WeightsError(f"{spec}: cannot get {repo} from the Hugging Face hub ({type(e).__name__}: {e}); pass a "
                           "local snapshot directory instead") from None
