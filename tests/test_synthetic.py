"""The synthetic MuSe-format generator: layout, determinism, and labels that need temporal context."""
import filecmp

import numpy as np
import pytest

from core.corpus import load_corpus
from core.metrics import ccc
from core.muse_files import PARTITION_FILE, feature_file, label_file, read_partition
from core.synthetic import LAG, generate, main


def test_layout_and_columns(tiny_root):
    split = read_partition(tiny_root)
    video = split["train"][0]
    header = feature_file(tiny_root, "egemaps", video).read_text().splitlines()[0]
    assert header == "timestamp,segment_id," + ",".join(f"egemaps_{j}" for j in range(10))
    rows = np.loadtxt(label_file(tiny_root, "arousal", video), delimiter=",", skiprows=1)
    assert label_file(tiny_root, "arousal", video).read_text().startswith("timestamp,value,segment_id\n")
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(rows)) * 250)
    assert np.abs(rows[:, 1]).max() <= 1 and rows[0, 2] == 1 and np.all(np.diff(rows[:, 2]) >= 0)
    lines = (tiny_root / PARTITION_FILE).read_text().splitlines()
    assert lines[0] == "Id,Proportion" and lines[1] == lines[-1]  # one repeated Id, as in MuSe
    assert {len(v) for v in split.values()} == {8, 3}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    kwargs = dict(videos=4, feature_dims={"egemaps": 6, "fasttext": 5}, min_frames=100, max_frames=150)
    generate(tmp_path / "a", seed=7, **kwargs)
    generate(tmp_path / "b", seed=7, **kwargs)
    generate(tmp_path / "c", seed=8, **kwargs)
    video = read_partition(tmp_path / "a")["train"][0]
    for name in ("egemaps", "fasttext"):
        assert filecmp.cmp(feature_file(tmp_path / "a", name, video), feature_file(tmp_path / "b", name, video),
                           shallow=False)
    assert (tmp_path / "a" / PARTITION_FILE).read_text() == (tmp_path / "b" / PARTITION_FILE).read_text()
    assert (tmp_path / "a" / PARTITION_FILE).read_text() != (tmp_path / "c" / PARTITION_FILE).read_text()


def _ridge_devel_ccc(corpus, sets, window):
    """Ridge regression on train frames; window > 0 averages each feature over [t - LAG +- window / 2]."""
    def design(partition):
        x = np.concatenate([corpus.features[s][corpus.frames(partition)] for s in sets], 1).astype(np.float64)
        out = []
        for k in corpus.videos(partition):
            v = x[corpus.offsets[k] - corpus.frames(partition).start:corpus.offsets[k + 1] - corpus.frames(partition).start]
            if window:
                c = np.vstack([np.zeros((1, v.shape[1])), np.cumsum(v, 0)])
                t = np.arange(len(v))
                hi = np.clip(t - LAG + window // 2 + 1, 1, len(v))
                lo = np.minimum(np.clip(t - LAG - window // 2, 0, len(v)), hi - 1)
                v = (c[hi] - c[lo]) / (hi - lo)[:, None]
            out.append(v)
        return np.vstack(out)

    x, xd = design("train"), design("devel")
    mu, sd = x.mean(0), x.std(0) + 1e-8
    a = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ corpus.labels_of("train"))
    pred = np.hstack([(xd - mu) / sd, np.ones((len(xd), 1))]) @ w
    return [ccc(pred[:, j], corpus.labels_of("devel")[:, j]) for j in range(2)]


def test_one_frame_predicts_little_and_context_much_more(tmp_path):
    generate(tmp_path / "d", videos=40, seed=0, min_frames=800, max_frames=1200)
    corpus = load_corpus(tmp_path / "d", ["egemaps", "fasttext"], cache_dir=tmp_path / "cache")
    frame = _ridge_devel_ccc(corpus, ["egemaps", "fasttext"], 0)
    # arousal drifts within seconds, valence mostly with the topic segment: they want different spans
    context = [_ridge_devel_ccc(corpus, ["egemaps", "fasttext"], 20)[0],
               _ridge_devel_ccc(corpus, ["egemaps", "fasttext"], 60)[1]]
    assert all(0.05 < f < 0.35 for f in frame), frame
    assert all(c > f + 0.2 for c, f in zip(context, frame)), (frame, context)


def test_cli_options_for_other_sets_nan_and_withheld_test_labels(tmp_path, capsys):
    main([str(tmp_path / "e"), "--videos", "5", "--features", "au:7", "egemaps:4", "--min-frames", "60",
          "--max-frames", "80", "--nan-rate", "0.01", "--withhold-test-labels"])
    assert "wrote 5 videos" in capsys.readouterr().out
    test_video = read_partition(tmp_path / "e")["test"][0]
    assert not label_file(tmp_path / "e", "valence", test_video).exists()
    corpus = load_corpus(tmp_path / "e", ["au", "egemaps"], cache_dir=tmp_path / "cache")
    assert corpus.dims == {"au": 7, "egemaps": 4} and corpus.nonfinite["au"] > 0


def test_too_few_videos():
    with pytest.raises(ValueError, match="videos: need at least 3"):
        generate("/tmp/unused", videos=2)
