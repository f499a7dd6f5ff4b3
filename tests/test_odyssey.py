"""The odyssey runner (python -m fastloss.odyssey): synthetic tasks, folder loading, batches, training
determinism, evaluation against MONAI's metrics, and the whole pipeline on tiny volumes."""

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("monai")
pytest.importorskip("scipy")

from fastloss.odyssey import MODES, TABLE2_LOSSES, BatchSampler, Case, load_folder, make_case, run  # noqa: E402
from fastloss.odyssey import synthetic  # noqa: E402
from fastloss.odyssey.__main__ import main as cli_main  # noqa: E402
from fastloss.odyssey.train import TrainConfig, build_loss, build_network, evaluate, monai_loss, train_one  # noqa: E402

SIZE = (32, 32, 32)


# ----------------------------------------------------------------------------------- synthetic tasks
@pytest.mark.parametrize("task", sorted(synthetic.TASKS))
def test_generator_fractions_presence_and_variation(task):
    spec = synthetic.TASKS[task]
    n = math.prod(SIZE)
    cases = [make_case(task, SIZE, seed) for seed in (0, 1, 2)]
    for img, lab in cases:
        assert img.shape == (1, *SIZE) and img.dtype == torch.float32 and bool(torch.isfinite(img).all())
        assert lab.shape == (1, *SIZE) and lab.dtype == torch.int64
        assert set(torch.unique(lab).tolist()) == set(range(spec.num_classes))  # every class present
        # z-scored image
        assert abs(float(img.mean())) < 1e-4 and abs(float(img.std()) - 1) < 1e-3
        for c, target in spec.target_fractions().items():
            # Table 1's ratio times the per-case factor exp(±0.25), up to rounding to whole voxels
            frac = float((lab == c).sum()) / n
            lo = max(synthetic.MIN_VOXELS / n, target * math.exp(-synthetic.FRACTION_JITTER) - 0.5 / n)
            hi = max(synthetic.MIN_VOXELS / n, target * math.exp(synthetic.FRACTION_JITTER) + 0.5 / n)
            assert lo <= frac <= hi, (task, c, frac, target)
    # cases differ, in labels and images
    assert not torch.equal(cases[0][1], cases[1][1]) and not torch.equal(cases[1][1], cases[2][1])
    assert float((cases[0][0] - cases[1][0]).abs().mean()) > 0.1


def test_generator_table1_ratios_and_determinism():
    # BG:FG of Table 1: liver 42:1, tumour 576:1, pancreas 503:1, multi-organ 30:1 to 1243:1
    ratios = {t: {c: 1 / f - 1 for c, f in s.target_fractions().items()} for t, s in synthetic.TASKS.items()}
    assert ratios["liver"][1] == pytest.approx(42)
    assert ratios["liver_tumor"][1] == pytest.approx(576)
    assert ratios["pancreas"][1] == pytest.approx(503)
    assert min(ratios["multi_organ"].values()) == pytest.approx(30)
    assert max(ratios["multi_organ"].values()) == pytest.approx(1243)
    a, b = make_case("liver_tumor", (24, 24, 24), 7), make_case("liver_tumor", (24, 24, 24), 7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_generator_is_not_a_threshold_task():
    # Intensities overlap: no intensity window segments the small structures well voxel by voxel.
    img, lab = make_case("pancreas", SIZE, 3)
    g = lab[0] == 1
    best = 0.0
    values = img[0]
    for lo in np.linspace(-1, 3, 21):
        for hi in np.linspace(-1, 3, 21):
            if hi <= lo:
                continue
            p = (values > lo) & (values < hi)
            best = max(best, float(2 * (p & g).sum() / (p.sum() + g.sum())))
    assert best < 0.5


def test_generator_bad_input():
    with pytest.raises(ValueError, match="unknown synthetic task"):
        make_case("brain", SIZE, 0)
    with pytest.raises(ValueError, match="three integers >= 8"):
        make_case("liver", (32, 32), 0)
    with pytest.raises(ValueError, match="three integers >= 8"):
        make_case("liver", (32, 4, 32), 0)


# ----------------------------------------------------------------------------------- folders
def _pair(root, name, img_shape, lab_shape=None, labels="labels", images="images", suffix=""):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    (root / images).mkdir(exist_ok=True)
    (root / labels).mkdir(exist_ok=True)
    np.save(root / images / f"{name}{suffix}.npy", rng.normal(size=img_shape).astype(np.float32))
    if lab_shape is not None:
        lab = rng.integers(0, 3, size=lab_shape).astype(np.int16)
        np.save(root / labels / f"{name}.npy", lab)


def test_folder_split_and_normalisation(tmp_path):
    for i in range(10):
        _pair(tmp_path, f"case{i}", (12, 10, 8), (12, 10, 8))
    ds = load_folder(tmp_path, test_fraction=0.2, seed=1)
    assert len(ds.train) == 8 and len(ds.test) == 2
    assert {c.name for c in ds.train} | {c.name for c in ds.test} == {f"case{i}" for i in range(10)}
    assert ds.num_classes == 3 and ds.in_channels == 1
    again = load_folder(tmp_path, test_fraction=0.2, seed=1)
    assert [c.name for c in again.test] == [c.name for c in ds.test]
    raw = np.load(tmp_path / "images" / f"{ds.train[0].name}.npy").astype(np.float64)
    lo, hi = np.quantile(raw, [0.005, 0.995])
    clipped = np.clip(raw, lo, hi)
    expect = (clipped - clipped.mean()) / clipped.std(ddof=1)
    np.testing.assert_allclose(ds.train[0].image[0].numpy(), expect, atol=1e-5)
    assert ds.train[0].label.shape == (1, 12, 10, 8)


def test_folder_shape_mismatch_names_the_case(tmp_path):
    _pair(tmp_path, "good", (8, 8, 8), (8, 8, 8))
    _pair(tmp_path, "bad_one", (8, 8, 8), (8, 8, 9))
    with pytest.raises(ValueError, match=r"case 'bad_one'.*shapes differ.*\(8, 8, 8\).*\(8, 8, 9\)"):
        load_folder(tmp_path)


def test_folder_missing_label_names_the_case(tmp_path):
    _pair(tmp_path, "a", (8, 8, 8), (8, 8, 8))
    _pair(tmp_path, "b", (8, 8, 8), (8, 8, 8))
    _pair(tmp_path, "lonely", (8, 8, 8), None)
    with pytest.raises(ValueError, match="case 'lonely' has an image but no label"):
        load_folder(tmp_path)


def test_nnunet_raw_layout_and_errors(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "lesion": 2}, "file_ending": ".npy"}))
    for i in range(3):
        _pair(tmp_path, f"c_{i:03d}", (8, 8, 8), (8, 8, 8), labels="labelsTr", images="imagesTr", suffix="_0000")
    ds = load_folder(tmp_path, test_fraction=0.34)
    assert ds.class_names == ("background", "organ", "lesion")
    assert len(ds.train) == 2 and len(ds.test) == 1
    # a label file whose values are not in dataset.json
    np.save(tmp_path / "labelsTr" / "c_001.npy", np.full((8, 8, 8), 5, np.int16))
    with pytest.raises(ValueError, match=r"case 'c_001': label values \[5\]"):
        load_folder(tmp_path)
    (tmp_path / "labelsTr" / "c_001.npy").unlink()
    with pytest.raises(ValueError, match="case 'c_001' has an image but no label"):
        load_folder(tmp_path)


def test_folder_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_folder(tmp_path / "nope")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match="expected an nnU-Net raw dataset"):
        load_folder(tmp_path)
    _pair(tmp_path, "only", (8, 8, 8), (8, 8, 8))
    with pytest.raises(ValueError, match="at least 2 cases"):
        load_folder(tmp_path)


def test_nifti_spacing_and_axes(tmp_path):
    nib = pytest.importorskip("nibabel", reason="nibabel reads NIfTI (pip install nibabel)")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        xyz = rng.normal(size=(6, 7, 8)).astype(np.float32)  # NIfTI (x, y, z)
        lab = (xyz > 0.5).astype(np.uint8)
        aff = np.diag([0.5, 0.8, 2.5, 1.0])
        nib.save(nib.Nifti1Image(xyz, aff), str(tmp_path / "images" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "labels" / f"{name}.nii.gz"))
    ds = load_folder(tmp_path, test_fraction=0.5)
    case = ds.train[0]
    assert case.spacing == pytest.approx((2.5, 0.8, 0.5))  # (z, y, x)
    assert case.label.shape == (1, 8, 7, 6)
    want = (np.asarray(nib.load(str(tmp_path / "labels" / f"{case.name}.nii.gz")).dataobj)).transpose(2, 1, 0)
    np.testing.assert_array_equal(case.label[0].numpy(), want)


# ----------------------------------------------------------------------------------- batches, losses
def _cases(task="multi_organ", n=3, size=(16, 16, 16)):
    return [Case(f"{task}_{i}", *make_case(task, size, 100 + i)) for i in range(n)]


def test_batches_same_seed_same_batches_and_foreground_oversampling():
    cases = _cases("liver_tumor", n=3, size=(24, 24, 24))
    a, b = BatchSampler(cases, (8, 8, 8), 3, seed=5), BatchSampler(cases, (8, 8, 8), 3, seed=5)
    for _ in range(15):
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (3, 1, 8, 8, 8) and ya.shape == (3, 1, 8, 8, 8)
        # batch of 3: round(3 * 0.67) = 2, so sample 2 is centred on a tumour voxel
        assert bool((ya[2] > 0).any())
    # a volume smaller than the patch is padded
    x, y = BatchSampler(cases, (32, 8, 8), 2, seed=0).next()
    assert x.shape == (2, 1, 32, 8, 8)


def test_dicebd_schedule_scaled_to_the_run():
    # the floor 0.01 after 9.9 % of the epochs, as the paper's 0.01/epoch over 1000 epochs
    loss = build_loss("DiceBD", epochs=100)
    alphas = [loss.step_epoch() for _ in range(12)]
    assert alphas[0] == pytest.approx(1 - 0.099)
    assert alphas[9] == pytest.approx(0.01) and alphas[11] == pytest.approx(0.01)
    assert alphas[8] > 0.05


def test_wce_and_ell_weights_come_from_the_training_set():
    from fastloss import get_loss

    counts = torch.tensor([900.0, 90.0, 10.0], dtype=torch.float64)
    inv_f = torch.tensor([1000 / 900, 1000 / 90, 1000 / 10], dtype=torch.float64)  # Eq. (2): 1/f_c = N/n_c
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, 6, 6, 6))
    want = torch.nn.functional.cross_entropy(x, y[:, 0], weight=inv_f)
    assert float(build_loss("WCE", 10, counts)(x, y)) == pytest.approx(float(want), rel=1e-6)
    ell = float(build_loss("ELL", 10, counts)(x, y))
    assert ell == pytest.approx(float(get_loss("ELL", weight=inv_f.sqrt())(x, y)), rel=1e-6)
    assert ell != pytest.approx(float(get_loss("ELL")(x, y)), rel=1e-3)  # not the per-batch weights


@pytest.mark.parametrize("name", ["Dice", "IoU", "DiceCE", "Tversky", "HD"])
def test_monai_counterparts_compute_the_same_loss(name):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 1, 8, 8, 8))
    assert float(build_loss(name, 10)(x, y)) == pytest.approx(float(monai_loss(name)(x, y)), rel=1e-6)
    assert monai_loss("DiceTopK") is None


def test_table2_names():
    assert len(TABLE2_LOSSES) == 20
    for name in TABLE2_LOSSES:
        build_loss(name, 10)


# ----------------------------------------------------------------------------------- evaluation
class _Fixed(torch.nn.Module):
    """A 'network' whose logits put +10 on a fixed label map (the case's, with a part removed)."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        c = 5
        z = torch.nn.functional.one_hot(self.pred, c).movedim(-1, 1).float() * 10 + self.w
        return z.expand(x.shape[0], *z.shape[1:])


def test_evaluate_matches_monai_metrics():
    from monai.metrics import compute_dice, compute_surface_dice

    case = Case("c0", *make_case("multi_organ", (16, 16, 16), 1), spacing=(2.0, 1.0, 1.0))
    pred = case.label[0].clone()
    pred[:5] = 0  # miss a slab
    pred[10:, :4] = 3  # and add a false positive block
    rows = evaluate(_Fixed(pred[None]), [case], 5, (16, 16, 16), "cpu", tolerance=1.5)
    p = torch.nn.functional.one_hot(pred[None], 5).movedim(-1, 1)
    g = torch.nn.functional.one_hot(case.label[0][None], 5).movedim(-1, 1)
    want_dsc = compute_dice(p, g, include_background=False)[0]
    want_nsd = compute_surface_dice(p, g, [1.5] * 4, include_background=False, spacing=(2.0, 1.0, 1.0))[0]
    got = {(r["metric"], r["class"]): r["value"] for r in rows}
    for c in range(1, 5):
        assert got[("DSC", c)] == pytest.approx(float(want_dsc[c - 1]), abs=1e-6, nan_ok=True)
        assert got[("NSD", c)] == pytest.approx(float(want_nsd[c - 1]), abs=1e-6, nan_ok=True)
    assert got[("DSC", 3)] < 1


# ----------------------------------------------------------------------------------- training, pipeline
def _tiny_cfg(tmp_path, **kw):
    cfg = replace(
        MODES["quick"], tasks=("multi_organ",), losses=("Dice", "DiceTopK"), size=(16, 16, 16), n_train=3, n_test=3,
        filters=(4, 8, 16), train=TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, patch=(16, 16, 16)),
        timing_steps=1, out=str(tmp_path / "runs"), plots=False, progress=False, threads=1,
    )
    return replace(cfg, **kw)


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def one_thread():
    # small 3D convolutions run several times faster on one thread when the CPU is shared
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_is_deterministic_and_starts_from_one_initialisation(one_thread):
    from fastloss.odyssey.data import synthetic_dataset

    ds = synthetic_dataset("liver", (16, 16, 16), 2, 2, seed=0)
    cfg = TrainConfig(epochs=1, steps_per_epoch=3, patch=(16, 16, 16))

    def make():
        return build_network(1, 2, (16, 16, 16), (4, 8, 16))

    torch.manual_seed(0)
    init = {k: v.clone() for k, v in make().state_dict().items()}
    r1 = train_one("DiceCE", init, make, ds, cfg)
    r2 = train_one("DiceCE", init, make, ds, cfg)
    for k, v in r1.model.state_dict().items():
        assert torch.equal(v, r2.model.state_dict()[k]), k
    s1 = evaluate(r1.model, ds.test, 2, cfg.patch, "cpu")
    s2 = evaluate(r2.model, ds.test, 2, cfg.patch, "cpu")
    assert s1 == s2 and len(s1) == 2 * 2
    assert r1.epoch_loss == r2.epoch_loss and len(r1.step_ms) == 3
    # training changed the weights
    assert any(not torch.equal(v, init[k]) for k, v in r1.model.state_dict().items() if v.is_floating_point())


def test_pipeline_end_to_end(tmp_path, capsys):
    from fastloss.ranking import rank_scores

    threads = torch.get_num_threads()
    out = run(_tiny_cfg(tmp_path), run_id="tiny", log=lambda *a: None)
    assert torch.get_num_threads() == threads  # the run's thread setting is undone
    assert (tmp_path / "runs" / ".gitignore").read_text().strip().endswith("*")
    cases = _read(out / "cases.csv")
    assert set(cases[0]) == {"loss", "task", "metric", "case", "value"}
    keys = {(r["loss"], r["metric"], r["case"]) for r in cases}
    assert len(keys) == len(cases) == 2 * 2 * 3
    for r in cases:
        assert 0.0 <= float(r["value"]) <= 1.0
    # case values are the means of the per-class rows
    per_class = _read(out / "per_class.csv")
    assert len(per_class) == 2 * 2 * 3 * 4
    for r in cases:
        vals = [float(q["value"]) for q in per_class
                if (q["loss"], q["metric"], q["case"]) == (r["loss"], r["metric"], r["case"]) and q["value"] != "N/A"]
        assert float(r["value"]) == pytest.approx(sum(vals) / len(vals), abs=1e-5)
    ranking = _read(out / "ranking.csv")
    assert [r["rank"] for r in ranking] == ["1", "2"] and {r["loss"] for r in ranking} == {"Dice", "DiceTopK"}
    want = rank_scores(out / "cases.csv")
    for r in ranking:
        assert float(r["rank_score"]) == pytest.approx(want[r["loss"]])
        assert 0 <= float(r["rank_score"]) <= 1
    speed = _read(out / "throughput.csv")
    kinds = {(r["loss"], r["impl"], r["phase"]) for r in speed}
    assert kinds == {("Dice", "fastloss", "train"), ("DiceTopK", "fastloss", "train"),
                     ("Dice", "fastloss", "side_by_side"), ("Dice", "monai", "side_by_side"),
                     ("DiceTopK", "fastloss", "side_by_side")}
    for r in speed:
        assert float(r["step_ms_p20"]) <= float(r["step_ms_median"]) <= float(r["step_ms_p80"])
        assert 0 < float(r["loss_ms_median"]) < float(r["step_ms_median"]) and 0 < float(r["loss_share"]) < 1
    assert len(_read(out / "training.csv")) == 2 * 2
    info = json.loads((out / "config.json").read_text())
    assert info["run_id"] == "tiny" and info["failures"] == [] and info["threads"] == 1
    assert info["tasks"]["multi_organ"]["classes"][4] == "gallbladder"


def test_cli_errors_and_options(tmp_path, capsys):
    assert cli_main(["--losses", "NoSuchLoss", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "unknown loss name 'NoSuchLoss'" in capsys.readouterr().err
    assert cli_main(["--tasks", "brain", "--out", str(tmp_path)]) == 2
    assert "unknown synthetic task" in capsys.readouterr().err
    assert cli_main(["--patch", "20", "--out", str(tmp_path)]) == 2
    assert "divisible by 8" in capsys.readouterr().err
    assert cli_main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    from fastloss.odyssey.__main__ import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--mode", "full", "--losses", "table2", "--size", "48",
                                                      "--device", "cpu", "--no-monai"]))
    assert cfg.losses == TABLE2_LOSSES and cfg.size == (48, 48, 48) and cfg.train.device == "cpu" and not cfg.monai


def test_warmup_losses_train_on_their_warmup_loss_first(one_thread):
    from fastloss.odyssey.data import synthetic_dataset

    ds = synthetic_dataset("liver", (16, 16, 16), 2, 1, seed=0)
    cfg = TrainConfig(epochs=2, steps_per_epoch=3, patch=(16, 16, 16), warmup=0.5)

    def make():
        return build_network(1, 2, (16, 16, 16), (4, 8, 16))

    torch.manual_seed(0)
    init = make().state_dict()
    lovasz = train_one("Lovasz", init, make, ds, cfg)
    assert len(lovasz.step_ms) == 6 - 3  # steps 0-2 trained with CE (the paper's warm-up), not timed as Lovász
    ce = train_one("CE", init, make, ds, replace(cfg, epochs=1))
    # the warm-up is CE itself: the first epoch's mean loss is CE's
    assert lovasz.epoch_loss[0] == pytest.approx(ce.epoch_loss[0], rel=1e-6)
    assert len(train_one("Dice", init, make, ds, replace(cfg, epochs=1)).step_ms) == 3


def test_a_diverging_loss_is_recorded_as_na(tmp_path, monkeypatch):
    import fastloss.odyssey.train as T

    real = T.build_loss

    class NaNLoss(torch.nn.Module):
        def forward(self, x, y):
            return x.sum() * float("nan")

    monkeypatch.setattr(T, "build_loss", lambda name, *a, **k: NaNLoss() if name == "DiceTopK" else real(name, *a, **k))
    out = run(_tiny_cfg(tmp_path, timing_steps=0), run_id="nan", log=lambda *a: None)
    info = json.loads((out / "config.json").read_text())
    assert len(info["failures"]) == 1 and info["failures"][0].startswith("multi_organ/DiceTopK")
    rows = _read(out / "cases.csv")
    assert {r["value"] for r in rows if r["loss"] == "DiceTopK"} == {"N/A"}
    assert all(r["value"] != "N/A" for r in rows if r["loss"] == "Dice")


# ----------------------------------------------------------------------------------- issue 25: console, plots
def _logged(lines):
    return lambda *a: lines.append(" ".join(str(x) for x in a))


def test_console_says_what_runs_explains_the_rank_scores_and_is_honest_about_plots(tmp_path, one_thread):
    lines = []
    out = run(_tiny_cfg(tmp_path, n_test=2), run_id="talk", log=_logged(lines))
    first = lines[0]
    assert first.startswith("[odyssey] run talk (quick mode): 1 synthetic task (multi_organ; 16x16x16 volumes, "
                            "3 train / 2 test cases each) x 2 losses (Dice, DiceTopK)")
    assert "4 training steps per loss (2 epochs x 2, batch 2, 16x16x16 patches), 8 in all; cpu, 1 thread" in first
    assert first.endswith(f"writing to {out}/")
    # 2 test cases cannot reach significance at 0.05: said before training
    assert any("warning: multi_organ has 2 test case(s)" in line and "at least 3" in line for line in lines[1:3])
    per_loss = [line for line in lines if "DSC" in line and "step" in line and "ms" in line]
    assert len(per_loss) == 2 and all("(ETA " in line for line in per_loss)
    assert per_loss[-1].endswith("(ETA 0 s)")  # nothing left to train after the last loss
    text = "\n".join(lines)
    assert "Each task/metric column counts the other losses a loss beats there (0 to 1)" in text
    assert "rank_score is the mean of the 2 columns" in text
    assert "Each task/metric column" in (out / "ranking.txt").read_text()
    assert lines[-1].startswith("[odyssey] run talk: ") and f"; tables in {out}" in lines[-1]
    assert "plots" not in lines[-1]  # plots=False (--no-plots) announces none
    assert not list(out.glob("*.png"))


def test_eta_comes_from_measured_steps_only():
    from fastloss.odyssey.runner import _Eta

    now = [0.0]
    eta = _Eta(total_steps=10, total_losses=2, clock=lambda: now[0], min_steps=2)
    eta.start_loss()
    now[0] = 50.0  # building the network and the first step: slow, and never a step time
    eta.step()
    assert eta.seconds_left() is None and eta.text() == "ETA after the first steps"
    for _ in range(4):
        now[0] += 1.0
        eta.step()
    assert eta.steps == [1.0] * 4 and eta.seconds_left() == pytest.approx(5 * 1.0)  # 5 steps left at 1 s
    now[0] += 10.0  # evaluation of the first loss
    eta.end_loss()
    # the rest of the run's time (setup 50 s + evaluation 10 s) per finished loss, for the one loss left
    assert eta.seconds_left() == pytest.approx(5 * 1.0 + 60.0)
    eta.start_loss()
    now[0] += 30.0  # the second loss's first step: not a step time either
    eta.step()
    assert eta.steps == [1.0] * 4
    assert eta.text().startswith("ETA 1 min")


def test_an_early_error_leaves_no_empty_run_folder(tmp_path, capsys):
    root = tmp_path / "runs"
    assert cli_main(["--data", str(tmp_path / "missing"), "--out", str(root), "--run-id", "bad"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not root.exists()  # neither the run folder nor the root this run made for it
    (root / "kept").mkdir(parents=True)
    assert cli_main(["--data", str(tmp_path / "missing"), "--out", str(root), "--run-id", "bad"]) == 2
    assert sorted(p.name for p in root.iterdir()) == ["kept"]
    # an existing run folder is refused before anything runs, and kept as it was
    (root / "kept" / "cases.csv").write_text("x")
    assert cli_main(["--out", str(root), "--run-id", "kept", "--tasks", "liver"]) == 2
    assert "exists already" in capsys.readouterr().err and (root / "kept" / "cases.csv").read_text() == "x"


def test_box_plots_have_a_title_and_a_mean_median_legend():
    from fastloss.odyssey import plots

    rows = [{"loss": loss, "task": task, "metric": m, "case": f"c{k}", "value": 0.1 * k + (loss == "Dice") * 0.2}
            for loss in ("CE", "Dice") for task in ("liver", "pancreas") for m in ("DSC", "NSD") for k in range(4)]
    fig = plots.box_figure(rows, "DSC")
    try:
        assert "DSC per held-out case" in fig._suptitle.get_text()
        labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        assert "median" in labels and "mean" in labels
        assert [ax.get_title() for ax in fig.axes] == ["liver (4 test cases)", "pancreas (4 test cases)"]
    finally:
        plots._pyplot().close(fig)
    speed = [{"task": "liver", "loss": "Dice", "impl": impl, "phase": "side_by_side", "step_ms_median": 50.0,
              "loss_ms_median": 2.0} for impl in ("fastloss", "monai")]
    fig = plots.step_time_figure(speed)
    try:
        assert fig.axes[0].get_title() == "Training step time (side by side, the same batches)"
    finally:
        plots._pyplot().close(fig)


def test_a_run_with_plots_says_so(tmp_path, one_thread):
    pytest.importorskip("matplotlib")
    lines = []
    out = run(_tiny_cfg(tmp_path, plots=True, timing_steps=0, losses=("Dice",)), run_id="p", log=_logged(lines))
    assert lines[-1].endswith(f"tables and plots in {out}")
    assert sorted(p.name for p in out.glob("*.png")) == ["dsc_boxplot.png", "nsd_boxplot.png", "step_time.png"]


# ----------------------------------------------------------------------------------- losses after the paper
def test_names_after_the_paper_build_and_give_gradients():
    """Every BEYOND_PAPER name (any spelling get_loss takes) builds for the odyssey's logits: the registry's
    configuration as it is, UnifiedFocal on the softmax (MONAI's loss of the probabilities for two classes; the
    multi-class form with every foreground class rare beyond)."""
    from monai.losses import AsymmetricUnifiedFocalLoss

    from fastloss import get_loss, losses as L
    from fastloss.odyssey import BEYOND_LOSSES
    from fastloss.odyssey.train import canonical_name
    from fastloss.registry import BEYOND_PAPER

    assert BEYOND_LOSSES == tuple(BEYOND_PAPER) and len(BEYOND_LOSSES) >= 10
    assert canonical_name("skeleton-recall") == "SkeletonRecall" and canonical_name("SoftclDiceLoss") == "clDice"
    img, lab = make_case("multi_organ", (16, 16, 16), 3)
    C = int(lab.max()) + 1
    counts = torch.bincount(lab.reshape(-1), minlength=C).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, C, 16, 16, 16), generator=g, dtype=torch.float64)
    y = torch.cat([lab, make_case("multi_organ", (16, 16, 16), 4)[1]])[:, None]
    for name in BEYOND_LOSSES:
        loss = build_loss(name.lower(), 10, counts)
        xa = x.clone().requires_grad_(True)
        v = loss(xa, y)
        v.backward()
        assert v.ndim == 0 and bool(torch.isfinite(v)) and bool(torch.isfinite(xa.grad).all()), name
        assert float(xa.grad.abs().sum()) > 0, name
        if name == "UnifiedFocal":
            want = L.AsymmetricUnifiedFocalLoss(num_classes=C, rare_classes=list(range(1, C)))(torch.softmax(x, 1), y)
        else:
            want = get_loss(name)(x, y)
        assert float(v.detach()) == pytest.approx(float(want), rel=1e-9), name
    x2, y2 = x[:, :2], (y > 0).long()
    ours = build_loss("UnifiedFocal", 10, counts[:2])(x2, y2)
    assert float(ours) == pytest.approx(float(AsymmetricUnifiedFocalLoss(to_onehot_y=True)(torch.softmax(x2, 1), y2)),
                                        rel=1e-7)


def test_cli_takes_names_after_the_paper_and_the_beyond_group(tmp_path, capsys):
    from fastloss.odyssey import BEYOND_LOSSES
    from fastloss.odyssey.__main__ import build_parser, config_from_args
    from fastloss.odyssey.runner import _check

    cfg = config_from_args(build_parser().parse_args(["--losses", "beyond,Dice"]))
    assert cfg.losses == BEYOND_LOSSES + ("Dice",)
    cfg = config_from_args(build_parser().parse_args(["--losses", "dicece-skeleton-recall,CbDiceLoss,table2"]))
    assert _check(cfg).losses == ("DiceCESkeletonRecall", "cbDice") + TABLE2_LOSSES
    assert cli_main(["--losses", "NoSuchLoss", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown loss name 'NoSuchLoss'" in err and "after the paper: " in err and "DiceCESkeletonRecall" in err
    with pytest.raises(ValueError, match="repeat a name"):
        _check(replace(cfg, losses=("cbDice", "CbDice")))


def test_pipeline_with_losses_after_the_paper(tmp_path, one_thread):
    """A tiny run with three losses after the paper: every table has their rows, the ranking ranks them."""
    from fastloss.ranking import rank_scores

    names = ("DiceCESkeletonRecall", "cbDice", "UnifiedFocal")
    out = run(_tiny_cfg(tmp_path, losses=names, timing_steps=0), run_id="beyond", log=lambda *a: None)
    cases = _read(out / "cases.csv")
    assert {r["loss"] for r in cases} == set(names) and len(cases) == 3 * 2 * 3
    assert all(r["value"] != "nan" and 0.0 <= float(r["value"]) <= 1.0 for r in cases)
    ranking = _read(out / "ranking.csv")
    assert [r["rank"] for r in ranking] == ["1", "2", "3"] and {r["loss"] for r in ranking} == set(names)
    want = rank_scores(out / "cases.csv")
    for r in ranking:
        assert float(r["rank_score"]) == pytest.approx(want[r["loss"]])
    speed = _read(out / "throughput.csv")
    assert {(r["loss"], r["phase"]) for r in speed} == {(n, "train") for n in names}
    assert len(_read(out / "training.csv")) == 3 * 2
    assert json.loads((out / "config.json").read_text())["failures"] == []
