"""The data layer: reading the MuSe layout, the cache, the test-label lockout, windows, and every bad input."""
import time

import numpy as np
import pytest

from core.corpus import load_corpus
from core.errors import ConfigError, DataError, TestLabelsLocked
from core.muse_files import FEATURE_DIR, LABEL_DIR, PARTITION_FILE, feature_file, label_file, read_partition
from core.synthetic import generate
from core.windows import train_windows


def _rewrite(path, edit):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_corpus_holds_every_frame_in_partition_order(tiny_root, tmp_path):
    corpus = load_corpus(tiny_root, ["egemaps", "fasttext"], cache_dir=tmp_path)
    split = read_partition(tiny_root)
    assert corpus.video_ids.tolist() == split["train"] + split["devel"] + split["test"]
    assert corpus.dims == {"egemaps": 10, "fasttext": 12}
    # Frame k of video v is row k of its CSV file, in every array.
    k = corpus.videos("devel").start + 1
    video = corpus.video_ids[k]
    rows = np.loadtxt(feature_file(tiny_root, "fasttext", video), delimiter=",", skiprows=1)
    frames = slice(corpus.offsets[k], corpus.offsets[k + 1])
    np.testing.assert_array_equal(corpus.timestamps[frames], rows[:, 0])
    np.testing.assert_array_equal(corpus.segment_ids[frames], rows[:, 1])
    np.testing.assert_allclose(corpus.features["fasttext"][frames], rows[:, 2:], rtol=1e-6)
    labels = np.loadtxt(label_file(tiny_root, "valence", video), delimiter=",", skiprows=1)
    np.testing.assert_allclose(corpus.labels_of("devel")[frames.start - corpus.frames("devel").start:][:len(rows), 1],
                               labels[:, 1], rtol=1e-6)


def test_normalization_statistics_come_from_train_only(tiny_root, tmp_path):
    corpus = load_corpus(tiny_root, ["egemaps"], cache_dir=tmp_path)
    train = corpus.features["egemaps"][corpus.frames("train")].astype(np.float64)
    mean, std = corpus.stats_for(corpus.videos("train"))["egemaps"]
    np.testing.assert_allclose(mean, train.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, train.std(0), rtol=1e-4)
    everything = corpus.features["egemaps"].astype(np.float64)
    assert not np.allclose(mean, everything.mean(0), rtol=1e-5)


def test_second_load_comes_from_the_cache_and_a_changed_file_is_reparsed(root_copy, tmp_path):
    first = load_corpus(root_copy, ["egemaps", "fasttext"], cache_dir=tmp_path)
    assert len(first.parsed) == 4  # two feature sets, two label targets
    start = time.perf_counter()
    second = load_corpus(root_copy, ["egemaps", "fasttext"], cache_dir=tmp_path)
    assert second.parsed == () and time.perf_counter() - start < 5
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.features["fasttext"], first.features["fasttext"])

    video = first.video_ids[0]
    path = feature_file(root_copy, "egemaps", video)
    _rewrite(path, lambda lines: [lines[0], lines[1].replace(lines[1].split(",")[2], "123.5", 1)] + lines[2:])
    third = load_corpus(root_copy, ["egemaps", "fasttext"], cache_dir=tmp_path)
    assert len(third.parsed) == 1 and third.parsed[0].startswith("features-egemaps")
    assert third.features["egemaps"][0, 0] == 123.5
    assert third.fingerprint != first.fingerprint
    assert not list(tmp_path.glob(".*.tmp")), "no half-built cache entry may remain"


def test_a_failed_parse_leaves_no_cache_entry(root_copy, tmp_path):
    path = feature_file(root_copy, "egemaps", read_partition(root_copy)["devel"][0])
    _rewrite(path, lambda lines: lines[:3] + [lines[3] + ",7"] + lines[4:])
    with pytest.raises(DataError):
        load_corpus(root_copy, ["egemaps"], cache_dir=tmp_path)
    assert not any(p.name.startswith(("features-egemaps", ".features-egemaps")) for p in tmp_path.iterdir())


def test_test_labels_are_locked_and_never_read(root_copy, tmp_path):
    test_ids = read_partition(root_copy)["test"]
    for target in ("arousal", "valence"):  # unreadable test labels: a locked load must not even open them
        for video in test_ids:
            label_file(root_copy, target, video).write_text("garbage\n")
    corpus = load_corpus(root_copy, ["egemaps"], cache_dir=tmp_path)
    assert not corpus.has_test_labels
    assert corpus.labels.shape[0] == corpus.frames("devel").stop  # no test rows at all
    with pytest.raises(TestLabelsLocked):
        corpus.labels_of("test")
    with pytest.raises(DataError, match="label"):
        load_corpus(root_copy, ["egemaps"], test_labels=True, cache_dir=tmp_path)


def test_test_labels_when_asked_for(tiny_root, tmp_path):
    locked = load_corpus(tiny_root, ["egemaps"], cache_dir=tmp_path)
    full = load_corpus(tiny_root, ["egemaps"], test_labels=True, cache_dir=tmp_path)
    assert full.labels_of("test").shape == (full.frames("test").stop - full.frames("test").start, 2)
    assert full.fingerprint == locked.fingerprint  # same data, whether or not test labels were read


def test_real_layout_without_test_label_files_loads(root_copy, tmp_path):
    for target in ("arousal", "valence"):
        for video in read_partition(root_copy)["test"]:
            label_file(root_copy, target, video).unlink()
    assert load_corpus(root_copy, ["fasttext"], cache_dir=tmp_path).describe().startswith("14 videos")


def test_partition_file_repeats_keep_the_first_row(root_copy):
    path = root_copy / PARTITION_FILE
    first = path.read_text().splitlines()[1].split(",")[0]
    other = "devel" if read_partition(root_copy)["train"][0] != int(first) else "train"
    path.write_text(path.read_text() + f"{first},{other}\n")
    split = read_partition(root_copy)
    assert sum(v == int(first) for vs in split.values() for v in vs) == 1


# ---------------------------------------------------------------- windows

def _naive_windows(corpus, win, hop, segment_type, videos=None):
    """The entry's segment_sample, on plain Python lists, over the train videos (or those given)."""
    out = []
    for k in corpus.videos("train") if videos is None else videos:
        frames = list(range(corpus.offsets[k], corpus.offsets[k + 1]))
        groups = [frames]
        if segment_type == "id":
            ids = corpus.segment_ids[frames[0]:frames[-1] + 1]
            groups = [[f for f, s in zip(frames, ids) if s == sid] for sid in sorted(set(ids))]
        for g in groups:
            for s in range(0, len(g), hop):
                e = min(s + win, len(g))
                out.append((g[s], e - s))
                if e == len(g):
                    break
    return sorted(out)


@pytest.mark.parametrize("win,hop,segment_type", [(200, 100, "normal"), (50, 50, "normal"), (64, 17, "normal"),
                                                  (100, 30, "id"), (1000, 1000, "normal")])
def test_windows_match_the_entrys_slicing(tiny_root, tmp_path, win, hop, segment_type):
    corpus = load_corpus(tiny_root, ["egemaps"], cache_dir=tmp_path)
    starts, lengths = train_windows(corpus, corpus.videos("train"), win, hop, segment_type)
    assert sorted(zip(starts.tolist(), lengths.tolist())) == _naive_windows(corpus, win, hop, segment_type)


def test_a_gathered_batch_is_the_normalized_slice(tiny_root, tmp_path):
    from core.batching import FrameInputs
    from core.config import TrainConfig
    corpus = load_corpus(tiny_root, ["egemaps", "fasttext"], cache_dir=tmp_path)
    cfg = TrainConfig(feature_set=("fasttext", "egemaps"), normalize=("egemaps",), add_seg_id=True,
                      emo_dim_set=("valence",))
    inputs = FrameInputs(corpus, cfg, corpus.videos("train"))
    starts, lengths = train_windows(corpus, corpus.videos("train"), 120, 60)
    pick = np.array([0, len(starts) - 1, 3])
    batch = inputs.batch(starts[pick], lengths[pick])
    mean, std = corpus.stats_for(corpus.videos("train"))["egemaps"]
    for row, (s, n) in enumerate(zip(starts[pick], lengths[pick])):
        expected = np.concatenate([corpus.segment_ids[s:s + n, None], corpus.features["fasttext"][s:s + n],
                                   (corpus.features["egemaps"][s:s + n] - mean) / std], axis=1)
        np.testing.assert_allclose(batch.x[row, :n].numpy(), expected, rtol=1e-5, atol=1e-5)
        assert not batch.x[row, n:].any() and batch.mask[row].sum() == n
        np.testing.assert_array_equal(batch.y[row, :n, 0].numpy(), corpus.labels[s:s + n, 1])


# ---------------------------------------------------------------- bad input

def test_missing_root():
    with pytest.raises(DataError, match="does not exist"):
        load_corpus("/nonexistent/muse", ["egemaps"])


def test_unknown_feature_set_names_the_folder_and_the_choices(tiny_root):
    with pytest.raises(DataError, match=r"unknown feature set 'vggface'.*available: egemaps, fasttext"):
        load_corpus(tiny_root, ["vggface"])


def test_unknown_target_name(tiny_root):
    with pytest.raises(ConfigError, match="emo_dim_set: unknown target dominance"):
        load_corpus(tiny_root, ["egemaps"], ["dominance"])


def test_missing_feature_file_names_the_video(root_copy):
    video = read_partition(root_copy)["train"][2]
    feature_file(root_copy, "fasttext", video).unlink()
    with pytest.raises(DataError, match=rf"fasttext: no 'fasttext' feature file for video ids .*{video}"):
        load_corpus(root_copy, ["fasttext"])


def test_feature_file_without_a_partition_id(root_copy):
    source = feature_file(root_copy, "egemaps", read_partition(root_copy)["train"][0])
    (source.parent / "9999.csv").write_text(source.read_text())
    with pytest.raises(DataError, match="does not list: 9999.csv"):
        load_corpus(root_copy, ["egemaps"])


def test_partition_id_without_files(root_copy):
    path = root_copy / PARTITION_FILE
    path.write_text(path.read_text() + "777,devel\n")
    with pytest.raises(DataError, match="777"):
        load_corpus(root_copy, ["egemaps"])


def test_ragged_rows_name_the_file(root_copy):
    path = feature_file(root_copy, "egemaps", read_partition(root_copy)["devel"][1])
    _rewrite(path, lambda lines: lines[:5] + [",".join(lines[5].split(",")[:-1])] + lines[6:])
    with pytest.raises(DataError, match=rf"{path}.*Expected 12 columns, got 11"):
        load_corpus(root_copy, ["egemaps"])


def test_non_numeric_cell_names_the_file(root_copy):
    path = feature_file(root_copy, "fasttext", read_partition(root_copy)["test"][0])
    _rewrite(path, lambda lines: lines[:7] + [lines[7].rsplit(",", 1)[0] + ",abc"] + lines[8:])
    with pytest.raises(DataError, match=rf"{path}.*invalid value 'abc'"):
        load_corpus(root_copy, ["fasttext"])


def test_feature_sets_with_different_columns_per_file(root_copy):
    path = feature_file(root_copy, "egemaps", read_partition(root_copy)["devel"][0])
    _rewrite(path, lambda lines: [",".join(l.split(",")[:-1]) for l in lines])
    with pytest.raises(DataError, match=rf"{path}: 9 feature columns"):
        load_corpus(root_copy, ["egemaps"])


def test_label_timestamps_that_do_not_line_up(root_copy):
    video = read_partition(root_copy)["train"][1]
    path = label_file(root_copy, "arousal", video)
    _rewrite(path, lambda lines: lines[:4] + ["760," + lines[4].split(",", 1)[1]] + lines[5:])
    with pytest.raises(DataError, match=rf"{path}: timestamps do not line up.*line 5 has timestamp 760, but .*has 750"):
        load_corpus(root_copy, ["egemaps"])


def test_label_file_with_missing_rows(root_copy):
    video = read_partition(root_copy)["devel"][0]
    path = label_file(root_copy, "valence", video)
    _rewrite(path, lambda lines: lines[:-3])
    with pytest.raises(DataError, match=rf"{path}: timestamps do not line up.*rows, but"):
        load_corpus(root_copy, ["egemaps"], ["valence"])


def test_label_outside_range_names_file_and_line(root_copy):
    path = label_file(root_copy, "valence", read_partition(root_copy)["train"][0])
    _rewrite(path, lambda lines: lines[:9] + ["2000,1.7,1"] + lines[10:])
    with pytest.raises(DataError, match=rf"{path} line 10: label value 1.7.* outside \[-1, 1\]"):
        load_corpus(root_copy, ["egemaps"])


def test_empty_partition(root_copy):
    path = root_copy / PARTITION_FILE
    _rewrite(path, lambda lines: [l.replace(",devel", ",train") for l in lines])
    with pytest.raises(DataError, match="partition.csv: partition 'devel' has no videos"):
        load_corpus(root_copy, ["egemaps"])


def test_nan_and_inf_are_kept_as_gaps_and_counted_or_refused(root_copy, tmp_path):
    video = read_partition(root_copy)["train"][0]
    path = feature_file(root_copy, "egemaps", video)

    def poison(lines):
        cells = lines[3].split(",")
        cells[2], cells[5] = "nan", "inf"
        row = lines[6].split(",")
        row[4] = ""
        return lines[:3] + [",".join(cells)] + lines[4:6] + [",".join(row)] + lines[7:]

    _rewrite(path, poison)
    corpus = load_corpus(root_copy, ["egemaps"], cache_dir=tmp_path)
    assert corpus.nonfinite == {"egemaps": 3}
    assert np.isnan(corpus.features["egemaps"]).sum() == 3  # each run fills them from its own training videos
    mean, _ = corpus.stats_for(corpus.videos("train"))["egemaps"]
    assert mean[0] == pytest.approx(np.nanmean(corpus.features["egemaps"][corpus.frames("train"), 0]))
    assert "3 NaN/inf cells" in corpus.describe()
    with pytest.raises(DataError, match=rf"'egemaps' has 3 NaN/inf cells: {path} \(3\)"):
        load_corpus(root_copy, ["egemaps"], nonfinite="error", cache_dir=tmp_path)


def test_missing_partition_file(root_copy):
    (root_copy / PARTITION_FILE).unlink()
    with pytest.raises(DataError, match="partition file .* is missing"):
        load_corpus(root_copy, ["egemaps"])


def test_missing_label_folder(root_copy):
    import shutil
    shutil.rmtree(root_copy / LABEL_DIR / "arousal")
    with pytest.raises(DataError, match="'arousal' label folder .* is missing"):
        load_corpus(root_copy, ["egemaps"])
    assert load_corpus(root_copy, ["egemaps"], ["valence"]).targets == ("valence",)


def test_feature_folder_layout_constant():
    assert str(FEATURE_DIR).endswith("feature_segments/label_aligned")


# ---------------------------------------------------------------- splits

def test_folds_never_share_a_video_and_never_hold_test(tiny_root, tmp_path):
    from core.splits import make_splits
    corpus = load_corpus(tiny_root, ["egemaps"], cache_dir=tmp_path)
    test = set(corpus.videos("test"))
    labelled = set(corpus.videos("train")) | set(corpus.videos("devel"))
    splits = make_splits(corpus, 4, seed=5)
    scored = [set(s.score.tolist()) for s in splits]
    assert set().union(*scored) == labelled and sum(map(len, scored)) == len(labelled)  # each video scored once
    for s in splits:
        train, select, score = set(s.train.tolist()), set(s.select.tolist()), set(s.score.tolist())
        assert not (train & select) and not (train & score) and not (select & score)
        assert train | select | score == labelled and not (train | select | score) & test
    assert [s.score.tolist() for s in make_splits(corpus, 4, seed=5)] == [s.score.tolist() for s in splits]
    assert [s.score.tolist() for s in make_splits(corpus, 4, seed=6)] != [s.score.tolist() for s in splits]
    standard = make_splits(corpus, 1)[0]
    assert standard.train.tolist() == list(corpus.videos("train")) and standard.selects_on_score
    with pytest.raises(ConfigError, match="folds: 2 folds leave no fold to select epochs on"):
        make_splits(corpus, 2)
    with pytest.raises(ConfigError, match="folds: 12 folds, but train and devel hold only 11 videos"):
        make_splits(corpus, 12)


def test_statistics_of_a_fold_come_from_its_training_videos(tiny_root, tmp_path):
    from core.splits import make_splits
    corpus = load_corpus(tiny_root, ["egemaps"], cache_dir=tmp_path)
    split = make_splits(corpus, 3, seed=0)[1]
    frames = corpus.features["egemaps"][corpus.frame_index(split.train)].astype(np.float64)
    mean, std = corpus.stats_for(split.train)["egemaps"]
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, frames.std(0), rtol=1e-4)


@pytest.mark.parametrize("segment_type", ["normal", "id"])
def test_windows_over_a_fold_stay_inside_its_videos(tiny_root, tmp_path, segment_type):
    from core.splits import make_splits
    corpus = load_corpus(tiny_root, ["egemaps"], cache_dir=tmp_path)
    videos = make_splits(corpus, 3, seed=0)[0].train  # not contiguous in the corpus
    starts, lengths = train_windows(corpus, videos, 100, 30, segment_type)
    assert sorted(zip(starts.tolist(), lengths.tolist())) == _naive_windows(corpus, 100, 30, segment_type, videos)


def test_a_binary_feature_file_is_named_without_its_bytes(root_copy):
    path = feature_file(root_copy, "egemaps", read_partition(root_copy)["train"][0])
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError) as error:
        load_corpus(root_copy, ["egemaps"])
    assert str(error.value) == f"{path} is not a text CSV file (it holds binary data)"


def test_a_corpus_travels_as_the_names_of_its_cache_files_and_maps_them(tiny_root, tmp_path):
    import pickle
    corpus = load_corpus(tiny_root, ["egemaps", "fasttext"], cache_dir=tmp_path)
    shipped = pickle.dumps(corpus)
    assert len(shipped) < corpus.data_bytes / 4  # the features are not in it
    back = pickle.loads(shipped)
    for name, values in corpus.features.items():
        assert isinstance(back.features[name], np.memmap) and back.features[name].filename == values.filename
        np.testing.assert_array_equal(back.features[name], values)
    in_memory = pickle.dumps(corpus.in_memory())
    assert len(in_memory) > corpus.data_bytes  # for machines that cannot see the cache
    np.testing.assert_array_equal(pickle.loads(in_memory).features["fasttext"], corpus.features["fasttext"])


def test_mapped_loads_equal_parsed_ones_gaps_included(root_copy, tmp_path):
    from core.muse_files import read_feature_file
    video = read_partition(root_copy)["train"][0]
    path = feature_file(root_copy, "egemaps", video)
    _rewrite(path, lambda lines: lines[:2] + [",".join(lines[2].split(",")[:3] + ["nan"] + lines[2].split(",")[4:])]
             + lines[3:])
    first = load_corpus(root_copy, ["egemaps"], cache_dir=tmp_path)
    second = load_corpus(root_copy, ["egemaps"], cache_dir=tmp_path)
    assert first.parsed and not second.parsed
    rows = read_feature_file(path).values
    k = list(first.video_ids).index(video)
    mapped = second.features["egemaps"][first.offsets[k]:first.offsets[k + 1]]
    assert np.isnan(rows[1, 1]) and np.isnan(rows).sum() == 1
    np.testing.assert_array_equal(mapped, rows)  # NaN where the file has its gap
    assert not second.features["egemaps"].flags.writeable


def test_a_feature_set_as_wide_as_deepspectrum_loads(tmp_path):
    # 4,096 columns make a ~60 kB header line: it must be read whole, not cut at the first block
    root = tmp_path / "muse"
    generate(root, videos=6, seed=0, feature_dims={"deepspectrum": 4096}, min_frames=20, max_frames=30)
    corpus = load_corpus(root, ["deepspectrum"], cache_dir=tmp_path / "cache")
    assert corpus.features["deepspectrum"].shape[1] == 4096


def test_a_header_naming_a_column_twice_is_refused(root_copy):
    path = feature_file(root_copy, "egemaps", read_partition(root_copy)["train"][0])
    _rewrite(path, lambda lines: [lines[0].replace(lines[0].split(",")[3], lines[0].split(",")[2])] + lines[1:])
    name = path.read_text().split(",")[2]
    with pytest.raises(DataError, match=rf"{path}: column names appear twice in the header: {name}$"):
        load_corpus(root_copy, ["egemaps"])


def test_sums_made_while_parsing_equal_those_made_from_the_cache(tiny_root, tmp_path):
    first = load_corpus(tiny_root, ["egemaps", "fasttext"], cache_dir=tmp_path)
    made = sorted(tmp_path.glob("features-*/sums-raw.npy"))
    assert len(made) == 2  # one per feature set, written by the parse
    for path in made:
        path.unlink()
    second = load_corpus(tiny_root, ["egemaps", "fasttext"], cache_dir=tmp_path)
    assert not second.parsed and len(list(tmp_path.glob("features-*/sums-raw.npy"))) == 2  # made again, from the cache
    for name in ("egemaps", "fasttext"):
        np.testing.assert_allclose(second.video_sums[name], first.video_sums[name], rtol=1e-12)
