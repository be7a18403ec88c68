"""Use of the pool in fine-tuning, hand-checked: FixMatch loss (pseudo-labels restricted to the image's
dataset, confidence mask), self-training's class-balanced selection of pseudo-labels and its soft
(distillation) targets."""

import math

import pytest
import torch

from fewshot.data.label_space import LabelSpace
import torch.nn.functional as F

from fewshot.train.semi import (calibrated_thresholds, class_quota, fixmatch_loss, select_pseudo_labels,
                                teacher_probabilities)

SPACE = LabelSpace(("a", "b"), (("a0", "a1"), ("b0", "b1", "b2")))


def test_pseudo_label_stays_inside_the_known_dataset():
    # Weak logits prefer class 3 (dataset b) but the image comes from dataset a: the pseudo-label must be in a.
    weak = torch.tensor([[2.0, 0.0, 0.0, 9.0, 0.0]])
    strong = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])
    loss, rate = fixmatch_loss(weak, strong, torch.tensor([0]), SPACE, threshold=0.5)
    p_a0 = math.exp(2) / (math.exp(2) + 1)  # restricted softmax over a's two classes
    assert p_a0 > 0.5 and rate.item() == 1.0
    expected = -(0.0 - math.log(4 + math.exp(1)))  # CE towards class 0 of the strong logits
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_unknown_source_uses_all_classes_and_threshold_masks():
    weak = torch.tensor([[2.0, 0.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    strong = torch.zeros(2, 5)
    loss, rate = fixmatch_loss(weak, strong, torch.tensor([-1, -1]), SPACE, threshold=0.9)
    # row 0: confident class 3 (over all classes); row 1: uniform, masked out
    assert rate.item() == 0.5
    assert math.isclose(loss.item(), math.log(5) / 2, rel_tol=1e-5)


def test_no_gradient_through_the_weak_view():
    weak = torch.randn(4, 5, requires_grad=True)
    strong = torch.randn(4, 5, requires_grad=True)
    loss, _ = fixmatch_loss(weak, strong, torch.tensor([0, 1, -1, 0]), SPACE, threshold=0.0)
    loss.backward()
    assert weak.grad is None and strong.grad is not None


def test_self_training_keeps_the_most_confident_images_of_each_class_up_to_its_quota():
    # dataset a (classes 0,1): rows 0-3; dataset b (classes 2,3,4): rows 4-6; row 7 unknown source
    logits = torch.tensor([
        [5.0, 0.0, 0.0, 0.0, 9.0],   # a: class 0, very confident (class 4 belongs to b: ignored)
        [3.0, 0.0, 0.0, 0.0, 0.0],   # a: class 0, less confident
        [1.0, 0.0, 0.0, 0.0, 0.0],   # a: class 0, least confident -> over the quota of 2
        [0.0, 2.0, 0.0, 0.0, 0.0],   # a: class 1
        [0.0, 0.0, 0.0, 4.0, 0.0],   # b: class 3
        [0.0, 0.0, 0.1, 0.0, 0.0],   # b: class 2, confidence below the threshold
        [9.0, 0.0, 0.0, 0.0, 0.0],   # b: class 0 is not b's -> restricted argmax is 2,3,4 (uniform: 2, low)
        [0.0, 0.0, 0.0, 0.0, 6.0],   # unknown source: argmax over all classes -> 4
    ])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, -1])
    quota = torch.tensor([2, 2, 2, 2, 2])
    idx, labels, conf = select_pseudo_labels(logits, ids, SPACE, quota, threshold=0.5)
    assert idx.tolist() == [0, 1, 3, 4, 7]
    assert labels.tolist() == [0, 0, 1, 3, 4]
    p = math.exp(5) / (math.exp(5) + 1)  # row 0's softmax within dataset a
    assert math.isclose(conf[0].item(), p, rel_tol=1e-6)
    assert bool((conf >= 0.5).all())
    # a quota of zero keeps nothing of that class
    idx0, _, _ = select_pseudo_labels(logits, ids, SPACE, torch.tensor([0, 2, 2, 2, 2]), threshold=0.5)
    assert 0 not in idx0.tolist() and 1 not in idx0.tolist()


def test_class_quota_splits_each_datasets_pool_evenly_over_its_classes():
    ids = torch.tensor([0] * 8 + [1] * 6)
    assert class_quota(ids, SPACE, 0.5).per_class.tolist() == [2, 2, 1, 1, 1]
    assert class_quota(ids, SPACE, 1.0).per_class.tolist() == [4, 4, 2, 2, 2]
    # unknown-source images are shared out in proportion to the classes
    assert class_quota(torch.tensor([-1] * 10), SPACE, 1.0).per_class.tolist() == [2, 2, 2, 2, 2]
    # a pool of about one image per class: one each, not round(0.5) == 0 for every class; no pool: none
    assert class_quota(torch.tensor([0, 0, 1, 1, 1]), SPACE, 0.5).per_class.tolist() == [1, 1, 1, 1, 1]
    assert class_quota(torch.tensor([1, 1, 1]), SPACE, 0.5).per_class.tolist() == [0, 0, 1, 1, 1]
    # a small unknown-source pool still gives every dataset's classes a quota, however many classes the others have
    assert class_quota(torch.tensor([-1]), SPACE, 0.5).per_class.tolist() == [1, 1, 1, 1, 1]
    big = LabelSpace(("small", "big"), (("s0", "s1"), tuple(f"b{i}" for i in range(50))))
    assert class_quota(torch.tensor([-1] * 20), big, 0.5).per_class.tolist() == [1] * 52
    # in all a dataset keeps at most keep_frac of its pool (unknown-source images shared by classes)
    assert class_quota(ids, SPACE, 0.5).per_dataset.tolist() == [4, 3]
    assert class_quota(torch.tensor([-1] * 20), big, 0.5).per_dataset.tolist() == [1, 9]  # at least one each


def _confident(labels: list[int], n_classes: int, conf: float) -> torch.Tensor:
    """Logits whose softmax gives each row's label probability ``conf`` and the rest an even share."""
    rest = (1 - conf) / (n_classes - 1)
    probs = torch.full((len(labels), n_classes), rest)
    probs[torch.arange(len(labels)), torch.tensor(labels)] = conf
    return probs.log()


def test_near_chance_pseudo_labels_are_never_kept_whatever_the_threshold():
    """50 classes, a teacher barely above chance (0.023 against 0.02): the quota alone kept every one of them."""
    space = LabelSpace(("d",), (tuple(f"c{i}" for i in range(50)),))
    labels = [i % 50 for i in range(500)]
    ids = torch.zeros(500, dtype=torch.long)
    quota = class_quota(ids, space, 0.5)
    idx, _, _ = select_pseudo_labels(_confident(labels, 50, 0.023), ids, space, quota.per_class, 0.0, quota.per_dataset)
    assert len(idx) == 0
    # above twice chance (2/50) they count
    idx, _, conf = select_pseudo_labels(_confident(labels, 50, 0.05), ids, space, quota.per_class)
    assert len(idx) == 250 and bool((conf > 0.04).all())
    # two classes: twice chance would be certainty, so halfway from chance to it (0.75)
    two = LabelSpace(("d",), (("a", "b"),))
    idx, _, _ = select_pseudo_labels(_confident([0, 1, 0], 2, 0.7), torch.zeros(3, dtype=torch.long), two,
                                     torch.tensor([5, 5]))
    assert len(idx) == 0
    idx, _, _ = select_pseudo_labels(_confident([0, 1, 0], 2, 0.8), torch.zeros(3, dtype=torch.long), two,
                                     torch.tensor([5, 5]))
    assert len(idx) == 3


def test_few_shots_and_a_huge_pool_keep_at_most_the_cap_per_labelled_image():
    """1 shot per class, 50 classes, a 100k pool: keep_frac alone gave 1000 per class against one true label."""
    space = LabelSpace(("d",), (tuple(f"c{i}" for i in range(50)),))
    ids = torch.zeros(100_000, dtype=torch.long)
    labelled = torch.ones(50, dtype=torch.long)
    labelled[:5] = 2
    quota = class_quota(ids, space, 0.5, labelled, 10)
    assert quota.per_class.tolist() == [20] * 5 + [10] * 45
    logits = _confident([i % 50 for i in range(100_000)], 50, 0.9)
    idx, labels, _ = select_pseudo_labels(logits, ids, space, quota.per_class, 0.0, quota.per_dataset)
    assert torch.bincount(labels, minlength=50).tolist() == [20] * 5 + [10] * 45
    # 10 shots (the demo): the cap of 100 leaves the keep_frac quota of 50 (1000 pool images, 10 classes) alone
    demo = LabelSpace(("d",), (tuple(f"c{i}" for i in range(10)),))
    pool = torch.zeros(1000, dtype=torch.long)
    assert class_quota(pool, demo, 0.5, torch.full((10,), 10), 10).per_class.tolist() == [50] * 10


def test_a_tiny_pool_keeps_no_more_than_keep_frac_of_it_but_one_at_least():
    """One pool image per class: the at-least-one-per-class floor kept all of them (100 %, not pseudo_keep)."""
    space = LabelSpace(("d",), (tuple(f"c{i}" for i in range(10)),))
    ids = torch.zeros(10, dtype=torch.long)
    quota = class_quota(ids, space, 0.5)
    logits = _confident(list(range(10)), 10, 0.5)
    logits[3] = _confident([3], 10, 0.9)[0]  # the most confident ones are kept
    logits[7] = _confident([7], 10, 0.8)[0]
    idx, labels, _ = select_pseudo_labels(logits, ids, space, quota.per_class, 0.0, quota.per_dataset)
    assert len(idx) == 5 and {3, 7} <= set(labels.tolist())
    quota = class_quota(torch.zeros(2, dtype=torch.long), space, 0.5)  # half of two images: one
    idx, _, _ = select_pseudo_labels(logits[:2], ids[:2], space, quota.per_class, 0.0, quota.per_dataset)
    assert len(idx) == 1


def test_teacher_probabilities_stay_inside_the_images_dataset():
    logits = torch.tensor([[1.0, 2.0, 9.0, 9.0, 9.0], [0.0, 0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    probs = teacher_probabilities(logits, torch.tensor([0, 1, -1]), SPACE)
    e = math.exp(1)
    assert torch.allclose(probs[0], torch.tensor([1 / (1 + e), e / (1 + e), 0, 0, 0]))
    assert torch.allclose(probs[1, 2:], torch.tensor([1.0, 2.0, 3.0]).softmax(0)) and float(probs[1, :2].sum()) == 0
    assert torch.allclose(probs[2], torch.full((5,), 0.2))  # unknown source: all classes


def test_soft_pseudo_targets_train_towards_the_teachers_probabilities(digits_root):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask

    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "train.device": "cpu", "optim.label_smoothing": 0.0, "model.drop_path": 0.0})
    infos = scan_root(digits_root, None, splits=("train", "val"))
    task = SupervisedTask(cfg, infos, torch.device("cpu"), DistContext())
    n_labelled, c = len(task.train_set), task.space.num_classes
    pool = task.train_set.images[:3]
    soft = torch.rand(3, c).softmax(1)
    task.add_pseudo_labelled(pool, soft.argmax(1), torch.zeros(3, dtype=torch.long), labelled_repeat=2, soft=soft)
    assert len(task.train_set) == 2 * n_labelled + 3
    idx = torch.tensor([0, n_labelled, 2 * n_labelled, 2 * n_labelled + 2])
    x, y, ds, _ = task.make_batch(idx, 0, 0)
    # labelled images (and their repeat) keep one-hot targets, pool images get the teacher's probabilities
    assert torch.equal(y[0], F.one_hot(task.train_set.targets[0], c).float()) and torch.equal(y[0], y[1])
    assert torch.allclose(y[2], soft[0]) and torch.allclose(y[3], soft[2])
    loss, metrics, n = task.training_step(task.model, (x, y, ds, None))
    logits = task.model(x)
    direct = -(y * logits.log_softmax(1)).sum(1).mean()
    assert n == 4 and torch.allclose(loss, direct, atol=1e-5)


def test_calibrated_thresholds_open_a_class_only_as_far_as_val_says_it_is_right():
    # class 0: val calls 10 images 0, ranked by confidence the first 8 are right, then 2 wrong
    # class 1: val calls 4 images 1, alternating right/wrong; class 2: never predicted
    conf0 = torch.linspace(0.99, 0.90, 10)
    probs = torch.zeros(14, 3)
    probs[:10, 0] = conf0
    probs[:10, 1] = 1 - conf0
    probs[10:, 1] = torch.tensor([0.8, 0.7, 0.6, 0.55])
    probs[10:, 0] = 1 - probs[10:, 1]
    targets = torch.tensor([0] * 8 + [1, 1] + [1, 0, 1, 0])
    t = calibrated_thresholds(probs, targets, precision=0.8)
    # (right + 1) / (k + 2) for class 0: k=8 -> 9/10 = 0.9, k=9 -> 9/11 = 0.82, k=10 -> 9/12 = 0.75
    assert math.isclose(t[0].item(), conf0[8].item(), rel_tol=1e-6)
    # class 1: k=1 -> 2/3, k=3 -> 3/5: never 0.8 -> closed; class 2 never predicted -> closed
    assert math.isinf(t[1].item()) and math.isinf(t[2].item())
    assert math.isclose(calibrated_thresholds(probs, targets, precision=0.9)[0].item(), conf0[7].item(), rel_tol=1e-6)
    # class 2 has no val image at all (held-out data): it takes the shared threshold, val cannot close it
    shared = calibrated_thresholds(probs, targets, precision=0.8, unmeasured=0.3)
    assert shared[2].item() == pytest.approx(0.3) and math.isinf(shared[1].item()) and shared[0] == t[0]
    # per-class thresholds in the selection: a closed class keeps nothing
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0, 0.0]])
    idx, labels, _ = select_pseudo_labels(logits, torch.tensor([0, 0, 1]), SPACE, torch.tensor([5] * 5),
                                          torch.tensor([0.5, float("inf"), 0.5, 0.5, 0.5]))
    assert idx.tolist() == [0, 2] and labels.tolist() == [0, 3]


def _stream(root, views="randaug", hflip=0.0):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.semi import UnlabeledStream

    cfg = resolve(flags={"data.root": str(root), "semi.views": views, "data.hflip": hflip})
    infos = scan_root(root, None, splits=("train", "val"))
    return UnlabeledStream(cfg, infos, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))


def test_fixmatch_weak_view_is_the_clean_image_and_the_strong_view_its_randaugment(digits_root):
    stream = _stream(digits_root)
    weak, strong, ids = stream.draw(24, seed=0, epoch=1, step=2)
    again = stream.draw(24, seed=0, epoch=1, step=2)
    assert torch.equal(weak, again[0]) and torch.equal(strong, again[1])  # reproducible from (seed, epoch, step)
    assert not torch.equal(stream.draw(24, seed=0, epoch=1, step=3)[0], weak)
    # the weak view of every drawn image is one pool image exactly, never mirrored without data.hflip
    pool = (stream.images[:].float() - 127.5) / 63.75
    flat = pool.flatten(1)
    for w in weak:
        assert bool((flat - w.flatten()).abs().amax(1).lt(1e-4).any())
        assert not bool((flat - w.flip(-1).flatten()).abs().amax(1).lt(1e-4).any()) or torch.equal(w, w.flip(-1))
    assert (strong - weak).abs().mean() > 0.05  # RandAugment on every image
    assert ids.shape == (24,) and bool((ids >= 0).all())


def test_fixmatch_views_follow_data_hflip(digits_root):
    stream = _stream(digits_root, hflip=1.0)
    weak, _, _ = stream.draw(8, seed=0, epoch=0, step=0)
    pool = ((stream.images[:].float() - 127.5) / 63.75).flip(-1).flatten(1)
    assert all(bool((pool - w.flatten()).abs().amax(1).lt(1e-4).any()) for w in weak)  # all mirrored


def test_a_config_saved_before_semi_views_keeps_its_mocov2_views(digits_root):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.semi import UnlabeledStream

    cfg = resolve(flags={"data.root": str(digits_root)})
    del cfg["semi"]["views"]  # as in a config.yaml written before the field existed (resumed as saved)
    stream = UnlabeledStream(cfg, scan_root(digits_root, None, splits=("train", "val")), 16, (0.5,) * 3,
                             (0.25,) * 3, torch.device("cpu"))
    assert stream.views == "mocov2"


def test_fixmatch_views_setting_is_checked(digits_root):
    from fewshot.errors import UserError

    with pytest.raises(UserError, match="semi.views"):
        _stream(digits_root, views="strongest")
    weak, strong, _ = _stream(digits_root, views="mocov2").draw(4, seed=0, epoch=0, step=0)
    assert weak.shape == strong.shape == (4, 3, 16, 16)


def test_fixmatch_step_trains_on_strong_views_only_and_weak_views_give_targets(digits_root):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask

    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "semi.method": "fixmatch", "semi.threshold": 0.0, "train.batch_size": 4})
    infos = scan_root(digits_root, None, splits=("train", "val"))
    task = SupervisedTask(cfg, infos, torch.device("cpu"), DistContext())
    batch = task.make_batch(task.plan_epoch(0)[0], 0, 0)
    x, _, _, (weak, strong, _) = batch
    assert len(weak) == len(strong) == 2 * len(x)  # mu = 2
    seen = []
    hook = task.model.register_forward_hook(lambda m, i, o: seen.append((len(i[0]), torch.is_grad_enabled())))
    loss, metrics, n = task.training_step(task.model, batch)
    hook.remove()
    # one graph-free pass over the weak views, one pass with a graph over labelled + strong views
    assert seen == [(len(weak), False), (len(x) + len(strong), True)]
    assert metrics["pseudo_label_rate"].item() == 100.0 and n == len(x)
    loss.backward()
    assert math.isfinite(loss.item())
