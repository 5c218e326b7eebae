"""The recipe's augmentations against torchvision's own (v2) implementations: auto-augment operations at every
magnitude bin and sign, the policies' tables and draws, RandomErasing, MixUp and CutMix."""

from __future__ import annotations

import io
import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image
from torchvision.transforms import v2

from parity_tests.tolerances import STATISTICAL_P
from train import augment_flax, augment_torch
from train.data import auto_augment, batch_augment, pipeline
from train.data.synthetic import photo

# Small images of both modes the pipeline produces (RGB and L), odd and even sizes, non-square: every geometric
# operation's centre and rounding differ between them. JPEG round trip: photograph-like pixel statistics.
SIZES = ((37, 29), (48, 48))


def images() -> list[Image.Image]:
    out = []
    for k, (w, h) in enumerate(SIZES):
        buffer = io.BytesIO()
        photo(k, w, h).save(buffer, "JPEG", quality=90)
        rgb = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        out += [rgb, rgb.convert("L")]
    return out


TORCHVISION_SPACES = {
    "ta_wide": (v2.TrivialAugmentWide, auto_augment.TRIVIAL_AUGMENT_WIDE, 31),
    "ra": (v2.RandAugment, auto_augment.RAND_AUGMENT, 31),
    "autoaugment": (v2.AutoAugment, auto_augment.AUTO_AUGMENT, 10),
    "augmix": (v2.AugMix, auto_augment.AUGMIX, 10),
}


@pytest.mark.parametrize("policy", TORCHVISION_SPACES)
def test_operation_lists_and_magnitude_bins_are_torchvisions(policy: str) -> None:
    """Same operations in the same order (the draw picks by index), same signedness, same float32 bins."""
    cls, ours, bins = TORCHVISION_SPACES[policy]
    space = cls._AUGMENTATION_SPACE
    assert list(ours) == list(space)
    for name, (magnitudes_fn, signed) in space.items():
        assert ours[name][1] == signed, name
        for height, width in ((224, 224), (176, 200), (29, 37)):
            theirs = magnitudes_fn(bins, height, width)
            mine = ours[name][0](bins, height, width)
            if theirs is None:
                assert mine is None, name
                continue
            np.testing.assert_array_equal(mine, theirs.numpy(), err_msg=f"{name} at {height}x{width}")


def test_autoaugment_policies_are_torchvisions() -> None:
    for policy in ("imagenet", "cifar10", "svhn"):
        theirs = v2.AutoAugment(v2.AutoAugmentPolicy(policy))._policies
        assert auto_augment.AUTO_AUGMENT_POLICIES[policy] == theirs, policy


def torchvision_op(image: Image.Image, name: str, magnitude: float, interpolation: str) -> Image.Image:
    """torchvision v2's own kernel for one operation on a PIL image."""
    transform = v2.TrivialAugmentWide(interpolation=v2.InterpolationMode(interpolation))
    return transform._apply_image_or_video_transform(image, name, magnitude, interpolation=transform.interpolation,
                                                     fill=transform._fill)


OPERATIONS = [(policy, name) for policy in ("ta_wide", "ra", "autoaugment") for name in
              TORCHVISION_SPACES[policy][1]]


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("policy, name", OPERATIONS)
def test_every_operation_at_every_bin_and_sign_gives_torchvisions_pixels(policy: str, name: str,
                                                                       interpolation: str) -> None:
    _, space, bins = TORCHVISION_SPACES[policy]
    for image in images():
        width, height = image.size
        magnitudes = space[name][0](bins, height, width)
        signs = (1, -1) if space[name][1] else (1,)
        values = [0.0] if magnitudes is None else [float(m) * s for m in magnitudes for s in signs]
        for magnitude in values:
            ours = np.asarray(auto_augment.apply_op(image, name, magnitude, interpolation))
            theirs = np.asarray(torchvision_op(image, name, magnitude, interpolation))
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
            assert np.array_equal(ours, theirs), (
                f"{name} {magnitude} ({interpolation}) on {image.mode} {image.size}: "
                f"{np.count_nonzero(ours != theirs)} pixels differ")


# ------------------------------------------------------------------------- RandomErasing, MixUp, CutMix


def float_batch(dtype: str, n: int = 8, size: int = 12, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, size, size, channels)).astype(dtype)


MIX = {"kind": np.array([batch_augment.MIXUP, batch_augment.CUTMIX], np.int32),
       "lam": np.array([float(np.float32(0.3719)), 1.0 - 5 * 4 / 144], np.float64),
       "lam_complement": np.array([1.0 - float(np.float32(0.3719)), 5 * 4 / 144], np.float64),
       "box": np.array([[0, 0, 0, 0], [3, 2, 8, 6]], np.int32)}
HEADS = {"fc": 10, "vowel": 7}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_erasing_mixup_and_cutmix_given_the_same_draws_equal_torchvisions(dtype: str) -> None:
    """The Flax step's RandomErasing, MixUp (replica 0) and CutMix (replica 1) against torchvision's v2 transforms
    fed the same boxes and λ: images and every head's soft targets bit for bit (torch's roundings kept)."""
    images = float_batch(dtype)
    labels = {h: np.random.default_rng(len(h)).integers(0, n, len(images)) for h, n in HEADS.items()}
    boxes = np.array([[1, 2, 5, 3], [0, 0, 0, 0]] * 4, np.int32)
    theirs_images = augment_torch.erase(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), boxes)
    theirs_images, theirs_targets = augment_torch.mix(
        theirs_images, {h: torch.from_numpy(v) for h, v in labels.items()}, MIX, HEADS)
    with jax.enable_x64(dtype == "float64"):
        erased = augment_flax.erase(jnp.asarray(images), jnp.asarray(boxes))
        one_hot = {h: jax.nn.one_hot(v, HEADS[h], dtype=jnp.float32) for h, v in labels.items()}
        params = {k: jnp.asarray(v.astype(dtype) if v.dtype == np.float64 else v) for k, v in MIX.items()}
        mine_images, mine_targets = jax.jit(augment_flax.mix)(erased, one_hot, params, jnp.int32(0))
    np.testing.assert_array_equal(np.asarray(mine_images).transpose(0, 3, 1, 2), theirs_images.numpy())
    for head in HEADS:
        assert theirs_targets[head].dtype == torch.float32  # torchvision's soft targets are float32
        np.testing.assert_array_equal(np.asarray(mine_targets[head]), theirs_targets[head].numpy())
    assert not np.array_equal(np.asarray(mine_images), images)  # something happened


def test_cutmix_lambda_is_corrected_to_the_pasted_area() -> None:
    """λ of every CutMix draw is 1 - box area / image area (and the box lies in the image)."""
    check_cutmix_lambda(batch_augment.mix_params)
    # An injected bug (λ as drawn, not corrected) is caught.
    with pytest.raises(AssertionError, match="not corrected"):
        check_cutmix_lambda(uncorrected_cutmix)


def check_cutmix_lambda(mix_params) -> None:
    rng = np.random.default_rng(5)
    for _ in range(500):
        kind, lam, lam_c, (x1, y1, x2, y2) = mix_params(rng, 0.0, 1.0, 20, 30)
        assert kind == batch_augment.CUTMIX and 0 <= x1 <= x2 <= 30 and 0 <= y1 <= y2 <= 20
        assert lam == 1.0 - (x2 - x1) * (y2 - y1) / 600 and lam_c == 1.0 - lam, "λ not corrected to the box"


def uncorrected_cutmix(rng, mixup_alpha, cutmix_alpha, height, width):
    """mix_params with CutMix's λ left as drawn (a bug)."""
    raw = float(np.float32(np.random.default_rng(rng.integers(1 << 30)).beta(cutmix_alpha, cutmix_alpha)))
    kind, _, _, box = batch_augment.mix_params(rng, mixup_alpha, cutmix_alpha, height, width)
    return kind, raw, 1.0 - raw, box


def torchvision_draws(transform, image: torch.Tensor, n: int) -> list[dict]:
    torch.manual_seed(0)
    return [transform.make_params([image]) for _ in range(n)]


DRAWS = 3000


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_and_cutmix_draws_follow_torchvisions_distributions(alpha: float) -> None:
    """Two-sample Kolmogorov-Smirnov tests, 3000 draws each: MixUp's λ, CutMix's corrected λ and box width against
    torchvision's own make_params; the choice between them is fair (binomial test)."""
    image = torch.zeros(3, 20, 30)
    rng = np.random.default_rng(7)
    ours_mixup = [batch_augment.mix_params(rng, alpha, 0.0, 20, 30) for _ in range(DRAWS)]
    ours_cutmix = [batch_augment.mix_params(rng, 0.0, alpha, 20, 30) for _ in range(DRAWS)]
    theirs_mixup = torchvision_draws(v2.MixUp(alpha=alpha, num_classes=10), image, DRAWS)
    theirs_cutmix = torchvision_draws(v2.CutMix(alpha=alpha, num_classes=10), image, DRAWS)
    pairs = {"MixUp λ": ([r[1] for r in ours_mixup], [d["lam"] for d in theirs_mixup]),
             "CutMix λ": ([r[1] for r in ours_cutmix], [d["lam_adjusted"] for d in theirs_cutmix]),
             "CutMix width": ([r[3][2] - r[3][0] for r in ours_cutmix], [d["box"][2] - d["box"][0]
                                                                          for d in theirs_cutmix])}
    for what, (ours, theirs) in pairs.items():
        p = scipy.stats.ks_2samp(ours, theirs).pvalue
        assert p > STATISTICAL_P, f"{what}: p = {p:.1e}"
    kinds = [batch_augment.mix_params(rng, alpha, alpha, 20, 30)[0] for _ in range(DRAWS)]
    p = scipy.stats.binomtest(kinds.count(batch_augment.MIXUP), DRAWS, 0.5).pvalue
    assert p > STATISTICAL_P, f"MixUp chosen {kinds.count(batch_augment.MIXUP)} of {DRAWS}: p = {p:.1e}"


def test_random_erasing_draws_follow_torchvisions_distribution() -> None:
    """RandomErasing(p=0.5): how often it erases (binomial) and the erased box's area and height (KS) against
    torchvision's make_params."""
    image = torch.zeros(3, 24, 40)
    eraser = v2.RandomErasing(p=0.5, value=0)
    torch.manual_seed(0)
    theirs = []
    for _ in range(DRAWS):  # _RandomApplyTransform draws the application first, then make_params
        if torch.rand(1) < eraser.p:
            params = eraser.make_params([image])
            theirs.append((params["h"], params["w"]) if params["v"] is not None else None)
        else:
            theirs.append(None)
    rng = np.random.default_rng(8)
    ours = [batch_augment.erase_box(rng, 24, 40, 0.5) for _ in range(DRAWS)]
    ours = [(h, w) if h else None for _, _, h, w in ours]
    erased_ours, erased_theirs = [b for b in ours if b], [b for b in theirs if b]
    p = scipy.stats.binomtest(len(erased_ours), DRAWS, len(erased_theirs) / DRAWS).pvalue
    assert p > STATISTICAL_P, (len(erased_ours), len(erased_theirs))
    for what, index in (("area", None), ("height", 0)):
        value = (lambda b: b[0] * b[1]) if index is None else (lambda b: b[index])
        p = scipy.stats.ks_2samp([value(b) for b in erased_ours], [value(b) for b in erased_theirs]).pvalue
        assert p > STATISTICAL_P, f"{what}: p = {p:.1e}"


def recorded_policy(policy_name: str, n: int) -> tuple[list, list]:
    """(ours, torchvision's) lists of the (operation, magnitude) pairs a policy applies over `n` images."""
    image = Image.new("RGB", (37, 29))
    ours, theirs = [], []

    def record_ours(img, name, magnitude, interpolation):
        ours.append((name, round(magnitude, 6)))
        return img

    rng = np.random.default_rng(9)
    for _ in range(n):
        auto_augment.auto_augment(image, policy_name, rng, ops=record_ours)
    transform = {"ta_wide": v2.TrivialAugmentWide(), "ra": v2.RandAugment(),
                 "imagenet": v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)}[policy_name]

    def record_theirs(img, name, magnitude, interpolation, fill):
        theirs.append((name, round(magnitude, 6)))
        return img

    torch.manual_seed(0)
    with mock.patch.object(transform, "_apply_image_or_video_transform", record_theirs):
        for _ in range(n):
            transform(image)
    return ours, theirs


@pytest.mark.parametrize("policy", ["ta_wide", "ra", "imagenet"])
def test_auto_augment_draws_follow_torchvisions_distribution(policy: str) -> None:
    """Which operation is applied (chi-square against torchvision's own draws, 3000 images) and, per operation,
    which magnitude (the bins and signs)."""
    ours, theirs = recorded_policy(policy, DRAWS)
    for what, key in (("operation", lambda r: r[0]), ("operation and magnitude", lambda r: r)):
        categories = sorted({key(r) for r in ours + theirs})
        table = np.array([[sum(1 for r in sample if key(r) == c) for c in categories] for sample in (ours, theirs)])
        table = table[:, table.sum(0) >= 10]  # chi-square needs populated cells; rare bins are few
        p = scipy.stats.chi2_contingency(table).pvalue
        assert p > STATISTICAL_P, f"{policy} {what}: p = {p:.1e}"


# ----------------------------------------------------------------------------------- repeated augmentation


def torchvision_ra_sampler(n: int, replicas: int, rank: int, reps: int, seed: int, epoch: int) -> list[int]:
    """references/classification/sampler.py RASampler.__iter__, as torchvision writes it (shuffle=True)."""
    num_samples = int(math.ceil(n * float(reps) / replicas))
    total_size = num_samples * replicas
    num_selected_samples = int(math.floor(n // 256 * 256 / replicas))
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    indices = torch.randperm(n, generator=g).tolist()
    indices = [ele for ele in indices for i in range(reps)]
    indices += indices[: (total_size - len(indices))]
    indices = indices[rank:total_size:replicas]
    return indices[:num_selected_samples]


@pytest.mark.parametrize("n, replicas, reps", [(1000, 1, 3), (1000, 8, 4), (1437, 3, 3), (300, 2, 4)])
def test_repeated_augmentation_sampler_is_torchvisions(n: int, replicas: int, reps: int) -> None:
    """Given torchvision's permutation, every replica's images per epoch are RASampler's, in order, dealt into the
    pipeline's global batches (replica r's k-th batch at [r*b, (r+1)*b) of global batch k)."""
    batch = 16
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(5 + 2)).numpy()
    order = pipeline.ra_order(n, reps, replicas, batch, seed=5, epoch=2, permutation=permutation)
    kept = pipeline.ra_kept(n, replicas)
    steps = kept // batch
    assert len(order) == steps * batch * replicas
    per_replica = order.reshape(steps, replicas, batch).transpose(1, 0, 2).reshape(replicas, -1)
    for rank in range(replicas):
        theirs = torchvision_ra_sampler(n, replicas, rank, reps, seed=5, epoch=2)
        assert len(theirs) == kept
        assert per_replica[rank].tolist() == theirs[:steps * batch]
