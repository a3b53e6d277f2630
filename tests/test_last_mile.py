"""The last mile: equal work at ASHA's rungs, gaps filled from each run's own training videos, bootstrap
intervals over videos, ensemble selection."""
import numpy as np
import pytest

from core.bootstrap import interval, paired_interval, resampled_ccc
from core.config import TrainConfig
from core.corpus import load_corpus
from core.ensemble import SINGLE, select_ensemble
from core.errors import DataError
from core.metrics import ccc
from core.muse_files import feature_file, read_partition
from core.splits import make_splits
from core.trainer import train

SMALL = dict(feature_set=("egemaps",), emo_dim_set=("arousal",), normalize=("egemaps",), d_rnn=8, batch_size=8,
             lr=5e-3, epochs=20, seed=1)
# win 100 hop 25 sees each frame up to 4 times a pass, win 40 hop 40 once: per pass, their work differs most
WINDOWS = [dict(win_len=100, hop_len=25), dict(win_len=40, hop_len=40)]


@pytest.fixture(scope="module")
def corpus(tiny_root, tmp_path_factory):
    return load_corpus(tiny_root, ["egemaps"], ["arousal"], cache_dir=tmp_path_factory.mktemp("cache"))


def _one_batch(cfg: TrainConfig) -> int:
    return cfg.batch_size * cfg.win_len


def _at(reports, milestone):
    """The first report at or past a milestone: what ASHA judges the trial on there."""
    return next(r for r in reports if r.frames >= milestone)


# ---------------------------------------------------------------- equal work at the rungs

def test_configs_of_other_windows_report_at_each_milestone_after_the_same_work(corpus):
    video_frames = int(corpus.lengths(corpus.videos("train")).sum())
    milestones, cap = [video_frames // 3, video_frames], 2 * video_frames
    seen = {}
    for windows in WINDOWS:
        cfg = TrainConfig(**SMALL | windows | {"max_frames": cap})
        reports = []
        train(corpus, cfg, log=None, on_epoch=reports.append, milestones=milestones)
        for m in milestones:
            assert m <= _at(reports, m).frames < m + _one_batch(cfg)
        assert reports[-1].stop_reason == "max_frames" and cap <= reports[-1].frames < cap + _one_batch(cfg)
        seen[windows["win_len"]] = reports
    # both meet the first rung part-way through their first epoch, and the cap after fewer passes for
    # the overlapping windows: a pass of theirs is several times the work
    assert all(_at(reports, milestones[0]).part_way for reports in seen.values())
    assert seen[100][-1].epoch < seen[40][-1].epoch


def test_a_rung_part_way_through_an_epoch_is_a_real_evaluation_and_leaves_the_training_as_it_was(corpus):
    cfg = TrainConfig(**SMALL | WINDOWS[0] | {"epochs": 2})
    plain, with_rung = [], []
    train(corpus, cfg, log=None, on_epoch=plain.append)
    milestone = plain[0].frames // 2
    train(corpus, cfg, log=None, on_epoch=with_rung.append, milestones=[milestone])
    rung = _at(with_rung, milestone)
    assert rung.part_way and rung.epoch == 1 and len(with_rung) == len(plain) + 1
    ends = [r for r in with_rung if not r.part_way]
    assert [r.train_loss for r in ends] == [r.train_loss for r in plain]  # the same batches, the same steps
    assert [r.select_ccc for r in ends] == [r.select_ccc for r in plain]
    # the run cut at that rung keeps the weights the rung evaluated: its score is theirs on devel
    cut = train(corpus, cfg.replace(max_frames=milestone), log=None)
    assert cut.last.select_ccc == rung.select_ccc and cut.last.part_way
    devel = corpus.videos("devel")
    assert ccc(cut.predict(devel)[:, 0], corpus.labels_for(devel)[:, 0]) == pytest.approx(rung.select_ccc["arousal"],
                                                                                          abs=1e-6)


def test_trials_of_other_windows_meet_every_rung_over_folds_after_the_same_frames(corpus, ray_cluster, monkeypatch):
    import torch

    from search.study.racing import rungs
    from search.study.trainable import TrialReport, objective

    splits = make_splits(corpus, 3, seed=0)
    grace = int(corpus.lengths(splits[0].train).sum()) // 4
    frames_per_fold = 4 * grace  # about a pass over a fold's videos
    milestones = rungs(frames_per_fold, grace, 2, len(splits))
    assert milestones == [grace, 2 * grace, frames_per_fold, 2 * frames_per_fold]
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the trial sets it for its own process; undone after the test
    monkeypatch.setattr("ray.tune.report", lambda result: reported.append(TrialReport.from_result(result)))
    corpus_ref, seen = ray_cluster.put(corpus), []
    try:
        for windows in WINDOWS:
            reported = []
            cfg = TrainConfig(**SMALL | windows | {"max_frames": frames_per_fold})
            objective({"trial_number": 0, "train": cfg, "cpu": 1, "rungs": milestones}, corpus_ref, splits)
            assert reported[-1].final and reported[-1].error is None
            at_rungs = [next(r for r in reported if r.train_frames >= m) for m in milestones]
            for m, report in zip(milestones, at_rungs):
                assert m <= report.train_frames < m + _one_batch(cfg) and np.isfinite(report.objective)
            assert [r.fold for r in at_rungs] == [1, 1, 1, 2]  # the last two on fold ends
            seen.append([r.train_frames for r in at_rungs])
    finally:
        torch.set_num_threads(threads)
    assert np.abs(np.subtract(*seen)).max() < max(_one_batch(TrainConfig(**w)) for w in WINDOWS)


# ---------------------------------------------------------------- gaps in the features

def test_gaps_are_filled_with_the_mean_of_each_runs_own_training_videos(root_copy, tmp_path):
    from core.batching import FrameInputs

    video = read_partition(root_copy)["train"][0]
    path = feature_file(root_copy, "egemaps", video)
    lines = path.read_text().splitlines()
    cells = lines[5].split(",")
    cells[3] = "nan"  # frame 4 of the video, feature column 1
    path.write_text("\n".join(lines[:5] + [",".join(cells)] + lines[6:]) + "\n")
    corpus = load_corpus(root_copy, ["egemaps"], ["arousal"], cache_dir=tmp_path)
    row = int(corpus.offsets[list(corpus.video_ids).index(video)]) + 4
    assert corpus.nonfinite == {"egemaps": 1} and np.isnan(corpus.features["egemaps"][row, 1])

    fills = []
    for split in make_splits(corpus, 3, seed=0):  # the video trains in one of them only
        values = corpus.features["egemaps"][corpus.frame_index(split.train)].astype(np.float64)
        mean = np.nanmean(values, axis=0)
        raw = FrameInputs(corpus, TrainConfig(normalize=()), split.train).batch(np.array([row]), np.array([1]))
        assert raw.x[0, 0, 1].item() == pytest.approx(mean[1], rel=1e-5)
        standardized = FrameInputs(corpus, TrainConfig(normalize=("egemaps",)), split.train)
        assert standardized.batch(np.array([row]), np.array([1])).x[0, 0, 1].item() == pytest.approx(0, abs=1e-5)
        filled = np.where(np.isnan(values), mean, values)
        _, std = corpus.stats_for(split.train)["egemaps"]
        np.testing.assert_allclose(std, filled.std(axis=0), rtol=1e-4)  # as the run sees its frames
        fills.append(mean[1])
    assert len(set(fills)) == 3  # three runs, three fills: none from the train partition as a whole


# ---------------------------------------------------------------- bootstrap over videos

def _videos_with_shared_errors(rng, videos=40, frame_noise=(0.5, 1.0)):
    """Labels with a per-video level, and two predictions that share a per-video error and differ in
    frame noise. Over infinitely many videos, the CCC of noise s is 2 v / (2 v + 0.5² + s²), v = 1 + 0.5²."""
    n = rng.integers(30, 61, size=videos)
    video = np.repeat(np.arange(videos), n)
    labels = rng.normal(0, 1, videos)[video] + rng.normal(0, 0.5, len(video))
    shared = rng.normal(0, 0.5, videos)[video]
    preds = [labels + shared + rng.normal(0, s, len(video)) for s in frame_noise]
    return preds, labels, np.r_[0, np.cumsum(n)]


def _population_ccc(noise: float) -> float:
    v = 1 + 0.5 ** 2
    return 2 * v / (2 * v + 0.5 ** 2 + noise ** 2)


def test_bootstrap_intervals_over_videos_cover_the_true_ccc_and_difference_about_95_percent():
    rng, repeats = np.random.default_rng(0), 200
    truth, difference = _population_ccc(0.5), _population_ccc(0.5) - _population_ccc(1.0)
    covered, covered_difference = 0, 0
    for r in range(repeats):
        (a, b), labels, bounds = _videos_with_shared_errors(rng)
        estimate, low, high = interval(a, labels, bounds, n=500, seed=r)
        assert estimate == pytest.approx(ccc(a, labels)) and low < estimate < high
        covered += low <= truth <= high
        low, high = paired_interval(a, b, labels, bounds, n=500, seed=r)[1:]
        covered_difference += low <= difference <= high
    # resampling frames instead of videos covers 38 % and 69 % here
    assert 0.88 <= covered / repeats <= 0.99 and 0.88 <= covered_difference / repeats <= 0.99


def test_a_paired_interval_is_narrower_when_the_predictions_share_video_errors():
    (a, b), labels, bounds = _videos_with_shared_errors(np.random.default_rng(1))
    _, low, high = paired_interval(a, b, labels, bounds, n=1000, seed=1)
    unpaired = np.percentile(resampled_ccc(a, labels, bounds, n=1000, seed=1)
                             - resampled_ccc(b, labels, bounds, n=1000, seed=2), [2.5, 97.5])
    assert high - low < 0.6 * (unpaired[1] - unpaired[0])


def test_a_draw_is_the_ccc_over_the_concatenated_frames_of_whole_videos():
    rng = np.random.default_rng(2)
    pred, labels = rng.normal(size=(50, 2)), rng.normal(size=(50, 2))
    first, second = slice(0, 20), slice(20, 50)

    def mean_ccc(rows):
        return np.mean([ccc(pred[rows, j], labels[rows, j]) for j in range(2)])

    possible = [mean_ccc(first), mean_ccc(np.r_[0:50]), mean_ccc(second)]  # AA, AB (or BA), BB
    draws = resampled_ccc(pred, labels, np.array([0, 20, 50]), n=200, seed=0)
    nearest = np.abs(draws[:, None] - possible).argmin(axis=1)
    np.testing.assert_allclose(draws, np.array(possible)[nearest], rtol=1e-9)
    assert set(nearest.tolist()) == {0, 1, 2}
    # the same videos given as one id per frame, rows in any order: the same draws
    order = rng.permutation(50)
    ids = np.r_[np.zeros(20, int), np.ones(30, int)]
    np.testing.assert_allclose(resampled_ccc(pred[order], labels[order], ids[order], n=200, seed=0), draws, rtol=1e-9)


def test_bootstrap_refuses_inputs_that_do_not_match():
    with pytest.raises(DataError, match=r"pred and labels .* \(got pred \(10,\), labels \(9,\)\)"):
        interval(np.zeros(10), np.zeros(9), np.array([0, 5, 10]))
    with pytest.raises(DataError, match="bounds rising from 0 to 10"):
        interval(np.arange(10.0), np.arange(10.0), np.array([0, 5, 9]))
    with pytest.raises(DataError, match="at least 2 videos"):
        interval(np.arange(10.0), np.arange(10.0), np.array([0, 10]))


# ---------------------------------------------------------------- ensemble selection

def test_ensemble_selection_finds_the_mixture_that_cancels_two_models_errors():
    t = np.linspace(0, 20 * np.pi, 2000, endpoint=False)
    labels = np.sin(t)
    a, b = labels + 0.3 * np.cos(t), labels - 0.4 * np.cos(t)  # 4 parts a to 3 parts b cancel exactly
    c = labels + 0.5 * np.random.default_rng(0).normal(size=t.size)
    ensemble = select_ensemble([a, b, c], labels)
    np.testing.assert_allclose(ensemble.weights, [4 / 7, 3 / 7, 0])
    assert ensemble.score == pytest.approx(1.0) and len(ensemble.round_scores) == 25
    np.testing.assert_allclose(ensemble.predict([a, b, c]), labels, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_the_ensemble_never_scores_below_the_best_single_model_of_its_library(seed):
    rng = np.random.default_rng(seed)
    labels = rng.normal(size=(400, 2))
    library = [labels * rng.uniform(0.3, 1.5) + rng.normal(scale=rng.uniform(0.3, 1.5), size=(400, 2))
               + rng.normal(scale=0.3, size=2) for _ in range(6)]
    ensemble = select_ensemble(library, labels)
    singles = [np.mean([ccc(p[:, j], labels[:, j]) for j in range(2)]) for p in library]
    np.testing.assert_allclose(ensemble.model_scores, singles)
    assert ensemble.score >= max(singles) and ensemble.weights.sum() == pytest.approx(1)
    fused = ensemble.predict(library)
    assert np.mean([ccc(fused[:, j], labels[:, j]) for j in range(2)]) == pytest.approx(ensemble.score)


def test_a_library_of_one_model_delivers_it_and_says_so():
    labels = np.linspace(-1, 1, 100)
    ensemble = select_ensemble([labels * 0.5], labels)
    assert ensemble.weights.tolist() == [1.0] and ensemble.note == SINGLE
    assert ensemble.score == pytest.approx(ccc(labels * 0.5, labels))
