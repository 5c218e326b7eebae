"""Published weights in one line (issue 26): torchvision's catalogue as data, downloads into torch's hub cache from a
server on 127.0.0.1 (hash checked, atomic, no request twice, offline message), both twins' builders, the Flax
conversion cache, and the other hubs' formats (timm's, Hugging Face transformers') both ways."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models import get_model_weights

import r34_flax
import r34_flax.pretrained
import r34_torch
from parity_tests.helpers import max_abs, nchw_to_nhwc, precision, randomize_batchnorm
from parity_tests.image_files import jpeg
from parity_tests.tolerances import F64_ABS
from r34 import hub
from r34.weights import BUILDERS, ENTRIES, URL_ROOT, WeightsError, entries, get_weights
from r34_flax.hf_format import FORMAT as HF_FORMAT
from r34_flax.weights_io import convert_to_flax, convert_to_torch, inspect_weights, write_hf_snapshot


# ------------------------------------------------------------------------------------------------ catalogue


@pytest.mark.parametrize("builder", BUILDERS)
def test_catalogue_is_torchvisions(builder: str) -> None:
    """Every entry (DEFAULT included) against the installed torchvision's enum: file, metadata, eval transform."""
    theirs = get_model_weights(builder)
    assert set(theirs.__members__) == set(entries(builder))
    for name, weights in theirs.__members__.items():
        mine = entries(builder)[name]
        transform = weights.transforms()
        assert (mine.url, mine.enum, mine.name) == (weights.url, theirs.__name__, weights.name), name
        assert (mine.resize_size, mine.crop_size, mine.interpolation) == (
            transform.resize_size[0], transform.crop_size[0], transform.interpolation.value)
        assert mine.meta == {k: weights.meta[k] for k in mine.meta}, name
        assert str(mine) == f"{theirs.__name__}.{weights.name}"


def test_names_in_every_spelling_and_bad_ones() -> None:
    entry = get_weights("ResNet50_Weights.IMAGENET1K_V2")
    for spelling in ("torchvision:resnet50", "resnet50.DEFAULT", "torchvision:resnet50.IMAGENET1K_V2",
                     "ResNet50_Weights.DEFAULT"):
        assert get_weights(spelling) == entry
    assert get_weights("IMAGENET1K_V2", "resnet50") == entry and get_weights("DEFAULT", "resnet34").name == "IMAGENET1K_V1"
    with pytest.raises(WeightsError, match=r"resnet34 has no 'IMAGENET1K_V2'; valid: ResNet34_Weights.IMAGENET1K_V1, "
                                           r"ResNet34_Weights.DEFAULT"):
        get_weights("IMAGENET1K_V2", "resnet34")
    with pytest.raises(WeightsError, match="are resnet18's, not resnet50's"):
        r34_torch.resnet50(weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="no builder 'resnet51'"):
        get_weights("torchvision:resnet51")


def test_each_entrys_eval_transform_is_torchvisions_pixel_for_pixel() -> None:
    """`entry.transforms()` against torchvision's `weights.transforms()` on generated JPEGs (landscape, portrait,
    smaller than the crop): every distinct resize/crop of the catalogue."""
    images = [Image.open(io.BytesIO(jpeg(seed, size))).convert("RGB")
              for seed, size in enumerate(((300, 220), (181, 260), (150, 120)))]
    distinct = {(e.resize_size, e.crop_size): e for e in ENTRIES}
    for entry in distinct.values():
        theirs = get_model_weights(entry.builder)[entry.name].transforms()
        for image in images:
            np.testing.assert_array_equal(entry.transforms()(image), theirs(image).numpy())
    assert sorted(distinct) == [(232, 224), (256, 224)]


# ------------------------------------------------------------------------------------ a server on 127.0.0.1


class Server:
    """A loopback HTTP server of generated weight files: counts requests; /cut/ paths send half a file."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests = root, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                cut = self.path.startswith("/cut/")
                path = server.root / self.path.removeprefix("/cut/").lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A served directory, torch's hub cache and the Flax cache in tmp_path, the mirror pointed at the server."""
    (tmp_path / "served").mkdir()
    running = Server(tmp_path / "served")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(hub.MIRROR_VARIABLE, running.url)
    yield running
    running.close()


def serve_weights(server: Server, builder: str = "resnet18", seed: int = 0) -> tuple[object, dict]:
    """A torchvision model of `builder` with random weights (randomised BatchNorm statistics) served as torchvision
    names its files (BUILDER-<sha256 prefix>.pth); (its catalogue entry, the state_dict)."""
    torch.manual_seed(seed)
    state = randomize_batchnorm(getattr(torchvision.models, builder)(), seed).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    name = f"{builder}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (server.root / name).write_bytes(data)
    entry = dataclasses.replace(entries(builder)["IMAGENET1K_V1"], url=URL_ROOT + name)
    return entry, state


def checkpoints(tmp_path: Path) -> list[str]:
    directory = tmp_path / "torch_home" / "hub" / "checkpoints"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_download_lands_in_torchs_cache_once_and_both_twins_load_it(server: Server, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    entry, state = serve_weights(server)
    model = r34_torch.resnet18(weights=entry, progress=False)
    assert checkpoints(tmp_path) == [entry.file_name] and len(server.requests) == 1
    # torchvision's own loader finds the file in the same cache (it would download to the same place)
    theirs = torchvision.models.resnet18()
    theirs.load_state_dict(torch.hub.load_state_dict_from_url(entry.url, check_hash=True, progress=False))
    assert len(server.requests) == 1
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value) and torch.equal(theirs.state_dict()[key], value), key
    assert model.weights == entry and not model.training
    # Flax: converted once, then read from the Flax cache (no request, no conversion)
    conversions = []
    convert = r34_flax.pretrained.convert_to_flax
    monkeypatch.setattr(r34_flax.pretrained, "convert_to_flax", lambda *a, **k: conversions.append(a) or convert(*a, **k))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64))
    theirs.double().eval()
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    with precision("float64"):
        for _ in range(2):
            flax = r34_flax.resnet18(weights=entry, progress=False, dtype=jnp.float64, param_dtype=jnp.float64)
            got = np.asarray(flax(jnp.asarray(nchw_to_nhwc(x))))
    assert len(conversions) == 1 and len(server.requests) == 1
    assert max_abs(expected, got) <= F64_ABS
    assert list((tmp_path / "cache" / "r34" / "flax_weights").iterdir())[0].name.startswith(Path(entry.file_name).stem)


def test_wrong_hash_cut_connection_and_offline_leave_nothing(server: Server, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    entry, _ = serve_weights(server)
    real = entries("resnet18")["IMAGENET1K_V1"]  # resnet18-f37072fd.pth: our file's hash differs
    (server.root / real.file_name).write_bytes((server.root / entry.file_name).read_bytes())
    with pytest.raises(WeightsError, match=f"does not start with {real.sha256_prefix}"):
        hub.fetch(real, progress=False)
    assert checkpoints(tmp_path) == []  # no file, no partial
    monkeypatch.setenv(hub.MIRROR_VARIABLE, server.url + "/cut")
    with pytest.raises(WeightsError, match="stopped after|cut off"):
        hub.fetch(entry, progress=False)
    assert checkpoints(tmp_path) == []
    monkeypatch.setenv(hub.MIRROR_VARIABLE, "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(WeightsError) as error:
        hub.fetch(entry, progress=False)
    message = str(error.value)
    assert "http://127.0.0.1:9/" + entry.file_name in message and "$TORCH_HOME" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / entry.file_name) in message
    assert checkpoints(tmp_path) == []


def test_num_classes_needs_replace_head(server: Server) -> None:
    entry, state = serve_weights(server)
    with pytest.raises(WeightsError, match="num_classes=10 but .* has 1000 classes; pass replace_head=True"):
        r34_torch.resnet18(weights=entry, num_classes=10, progress=False)
    model = r34_torch.resnet18(weights=entry, num_classes=10, replace_head=True, progress=False)
    assert model.fc.out_features == 10
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items() if not k.startswith("fc."))
    flax = r34_flax.resnet18(weights=entry, num_classes=10, replace_head=True, progress=False)
    assert flax.fc.kernel[...].shape == (512, 10)


# ------------------------------------------------------------------------------------------ other formats


HF_BODIES = ["resnet18", "resnet50"]  # transformers' ResNet: basic and bottleneck, no groups, no width factor


@pytest.mark.parametrize("builder", HF_BODIES)
def test_hugging_face_format_loads_in_transformers_and_both_twins_and_round_trips(builder: str,
                                                                                  tmp_path: Path) -> None:
    """torchvision's model written in transformers' layout: transformers' own ResNetForImageClassification loads it
    with no missing or unexpected key and gives torch.equal logits; both twins load it; to Flax and back to the HF
    format is bit-exact, its config.json kept."""
    transformers = pytest.importorskip("transformers", reason="transformers (test extra) is not installed")
    torch.manual_seed(1)
    tv = randomize_batchnorm(getattr(torchvision.models, builder)(num_classes=12), 1).eval()
    config = r34_flax.infer_config(tv.state_dict())
    snapshot = tmp_path / "hf"
    write_hf_snapshot(snapshot, tv.state_dict(), config)
    theirs, info = transformers.ResNetForImageClassification.from_pretrained(snapshot, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    theirs.eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        expected = tv(x)
        assert torch.equal(theirs(x).logits, expected)
        mine = r34_torch.from_pretrained(f"hf:{snapshot}")
        assert torch.equal(mine(x), expected)
    lines, problems = inspect_weights(snapshot)
    assert not problems and lines[0].startswith(f"format: {HF_FORMAT} (ResNetForImageClassification)")
    convert_to_flax(snapshot, tmp_path / "flax.safetensors")
    convert_to_torch(tmp_path / "flax.safetensors", tmp_path / "back", output_format="hf")
    original = transformers.ResNetForImageClassification.from_pretrained(snapshot).state_dict()
    back = transformers.ResNetForImageClassification.from_pretrained(tmp_path / "back").state_dict()
    assert set(original) == set(back) and all(torch.equal(original[k], back[k]) for k in original)
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == json.loads(
        (snapshot / "config.json").read_text())


def test_timm_names_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's ResNets have torchvision's names: its model.safetensors loads as it is; `timm:NAME` finds it in the
    Hugging Face cache (huggingface_hub, offline), and it converts back bit-exactly."""
    huggingface_hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub (hub extra) is not installed")
    torch.manual_seed(2)
    tv = randomize_batchnorm(torchvision.models.resnet18(), 2).eval()
    snapshot = tmp_path / "hf_home" / "hub" / "models--timm--resnet18.tv_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    import safetensors.torch

    safetensors.torch.save_file(tv.state_dict(), str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = r34_torch.from_pretrained("timm:resnet18.tv_in1k")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tv.state_dict().items())
    convert_to_flax(snapshot / "model.safetensors", tmp_path / "flax.safetensors")
    convert_to_torch(tmp_path / "flax.safetensors", tmp_path / "back.safetensors")
    back = safetensors.torch.load_file(str(tmp_path / "back.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in tv.state_dict().items())


def test_a_hugging_face_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    snapshot = tmp_path / "vit"
    snapshot.mkdir()
    (snapshot / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    tv = torchvision.models.resnet18()
    write_hf_snapshot(tmp_path / "ok", tv.state_dict(), r34_flax.infer_config(tv.state_dict()))
    (snapshot / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
    with pytest.raises(r34_flax.ConversionError, match="model_type 'vit' is not a ResNet"):
        r34_torch.from_pretrained(f"hf:{snapshot}")
    v1 = json.loads((tmp_path / "ok" / "config.json").read_text()) | {"downsample_in_bottleneck": True}
    (snapshot / "config.json").write_text(json.dumps(v1))
    with pytest.raises(r34_flax.ConversionError, match="ResNet V1"):
        convert_to_flax(snapshot, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------------------------------- command lines


def cached_as_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builder: str = "resnet18",
                          name: str = "IMAGENET1K_V1") -> dict:
    """Random weights where torchvision keeps its downloaded file (no network here): as if it had downloaded it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(hub.MIRROR_VARIABLE, "http://127.0.0.1:9")  # any download would fail loudly
    torch.manual_seed(3)
    state = getattr(torchvision.models, builder)().state_dict()
    path = hub.checkpoint_path(entries(builder)[name])
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_converter_takes_hub_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    """`python -m r34_flax.convert to-flax torchvision:resnet18 out/` reuses torchvision's cached file; unknown
    names exit 2 listing the valid ones, nothing written."""
    from r34_flax import convert

    state = cached_as_torchvision(tmp_path, monkeypatch)
    (tmp_path / "out").mkdir()
    assert convert.main(["to-flax", "torchvision:resnet18", str(tmp_path / "out")]) == 0
    assert "format: torchvision layout" in capsys.readouterr().out
    written = tmp_path / "out" / "resnet18-f37072fd_flax.safetensors"
    assert convert.main(["to-torch", str(written), str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    assert convert.main(["inspect", "ResNet18_Weights.DEFAULT"]) == 0
    assert "architecture: resnet18" in capsys.readouterr().out
    assert convert.main(["to-flax", "torchvision:resnet34.IMAGENET1K_V2", str(tmp_path / "out")]) == 2
    assert "valid: ResNet34_Weights.IMAGENET1K_V1, ResNet34_Weights.DEFAULT" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [written.name]


def test_trainer_weights_flag_resolves_torchvisions_spelling(tmp_path: Path) -> None:
    """`--weights ResNet50_Weights.IMAGENET1K_V2` (torchvision's train.py spelling): the model follows the weights,
    --test-only takes their eval resize and crop unless given; a contradicting --model is refused."""
    from train import cli

    args = cli.parse(["--weights", "ResNet50_Weights.IMAGENET1K_V2", "--test-only", "--data-path", str(tmp_path)],
                     "t", "", flax=True)
    assert (args.preset, args.eval_resize, args.val_crop_size, args.init_from) == (
        "resnet50", 232, 224, "ResNet50_Weights.IMAGENET1K_V2")
    assert any("published top-1 80.858%" in note for note in args.notes)
    args = cli.parse(["--weights", "IMAGENET1K_V1", "--model", "resnet50", "--test-only", "--val-resize-size", "256"],
                     "t", "", flax=True)
    assert (args.init_from, args.eval_resize) == ("ResNet50_Weights.IMAGENET1K_V1", 256)
    for argv, message in ((["--weights", "ResNet18_Weights.DEFAULT", "--model", "resnet50"], "are resnet18's"),
                          (["--weights", "IMAGENET1K_V3", "--model", "resnet50"], "valid: ResNet50_Weights"),
                          (["--weights", "DEFAULT", "--init-from", "x.pth"], "--weights and --init-from")):
        with pytest.raises(cli.FlagError, match=message):
            cli.parse(argv, "t", "", flax=True)


def test_test_only_report_prints_the_published_top1_beside_the_measured(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    from types import SimpleNamespace

    from train import eval_only

    entry = get_weights("ResNet50_Weights.IMAGENET1K_V2")
    spec = SimpleNamespace(name="imagefolder/inet", eval_split="validation", num_eval=50000, augment="imagenet",
                           image_size=176, eval_resize=232, eval_size=224)
    plan = SimpleNamespace(spec=spec, args=SimpleNamespace(preset="resnet50", weights_entry=entry), workdir=tmp_path)
    result = eval_only.report(plan, {"top1/fc": 0.80856, "top5/fc": 0.95}, Path("w"), "flax", "float32")
    assert "top-1 80.856% measured here; 80.858% published for ResNet50_Weights.IMAGENET1K_V2" in \
        capsys.readouterr().out
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["published"]["acc@1"] == 80.858 and saved == json.loads(json.dumps(result))
