"""The model, the CCC maths and real (tiny) trainings."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.config import TrainConfig
from core.corpus import load_corpus
from core.errors import ConfigError, TrainingDiverged
from core.metrics import ccc, loss_sum, masked_ccc
from core.model import FusionConfig, FusionModel, Model
from core.predictions import read_predictions, write_predictions
from core.trainer import train

SMALL = dict(feature_set=("egemaps",), emo_dim_set=("arousal",), normalize=("egemaps",), d_rnn=16, rnn_bi=True,
             n_layers=1, n_heads=2, win_len=60, hop_len=30, batch_size=8, lr=5e-3, epochs=6, seed=1)


@pytest.fixture(scope="module")
def corpus(tiny_root, tmp_path_factory):
    return load_corpus(tiny_root, ["egemaps", "fasttext"], cache_dir=tmp_path_factory.mktemp("cache"))


def _numpy_ccc(x, y):
    """CCC written as 2 rho sx sy / (sx^2 + sy^2 + (mx - my)^2), independently of core.metrics."""
    rho = np.corrcoef(x, y)[0, 1]
    return 2 * rho * x.std() * y.std() / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_matches_the_formula():
    rng = np.random.default_rng(0)
    y = rng.normal(size=500)
    for pred in (y + rng.normal(size=500), 0.3 * y + 2, -y, rng.normal(size=500)):
        assert ccc(pred, y) == pytest.approx(_numpy_ccc(pred, y), abs=1e-12)
    assert ccc(y, y) == pytest.approx(1.0)


def test_masked_ccc_is_the_ccc_of_each_sequence_over_its_valid_frames():
    rng = np.random.default_rng(1)
    lengths = [40, 17, 3, 40]
    pred, label = rng.normal(size=(4, 40)), rng.normal(size=(4, 40))
    mask = np.arange(40)[None, :] < np.array(lengths)[:, None]
    got = masked_ccc(torch.tensor(pred), torch.tensor(label), torch.tensor(mask)).numpy()
    expected = [_numpy_ccc(pred[i, :n], label[i, :n]) for i, n in enumerate(lengths)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    loss = loss_sum("ccc", torch.tensor(pred), torch.tensor(label), torch.tensor(mask)) / 4
    assert loss.item() == pytest.approx(1 - np.mean(expected))


@pytest.mark.parametrize("rnn,bi,layers", [("lstm", True, 1), ("gru", False, 2), ("lstm", False, 0)])
def test_padding_does_not_change_a_videos_predictions(rnn, bi, layers):
    torch.manual_seed(0)
    cfg = TrainConfig(emo_dim_set=("arousal", "valence"), d_rnn=8, n_layers=layers, n_heads=2, rnn=rnn, rnn_bi=bi,
                      rnn_n_layers=2)
    model = Model(cfg, d_in=5).eval()
    lengths = torch.tensor([30, 12, 1])
    x = torch.randn(3, 30, 5)
    with torch.no_grad():
        batched = model(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(x[i:i + 1, :n])
            torch.testing.assert_close(batched[i, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_projection_only_when_widths_differ_and_output_bias():
    same = Model(TrainConfig(d_rnn=16, out_biases=(0.25,)), d_in=16)
    assert isinstance(same.proj, torch.nn.Identity)
    assert same.out.fc_2.bias.item() == 0.25
    other = Model(TrainConfig(d_rnn=16), d_in=10)
    assert other.proj.weight.shape == (16, 10) and other.proj.bias is None


def test_fusion_model_shapes():
    model = FusionModel(FusionConfig(d_in=6, n_targets=2, d_model=8))
    assert model(torch.randn(2, 50, 6), torch.tensor([50, 20])).shape == (2, 50, 2)


def test_training_learns_well_above_a_shuffled_label_control(corpus):
    cfg = TrainConfig(**SMALL)
    learned = train(corpus, cfg, log=None)
    shuffled = load_corpus(corpus.root, ["egemaps"], ["arousal", "valence"])
    frames = shuffled.frames("train")
    shuffled.labels[frames] = shuffled.labels[frames][np.random.default_rng(0).permutation(frames.stop - frames.start)]
    control = train(shuffled, cfg, log=None)
    assert learned.last.score_ccc["arousal"] > 0.6
    assert control.last.score_ccc["arousal"] < 0.25
    assert learned.last.score_ccc["arousal"] > control.last.score_ccc["arousal"] + 0.4


def test_same_seed_same_run_other_seed_other_run(corpus):
    cfg = TrainConfig(**SMALL | {"epochs": 2, "rnn": "gru", "add_seg_id": True, "attn_dr": 0.1, "out_dr": 0.2})
    a, b = train(corpus, cfg, log=None), train(corpus, cfg, log=None)
    assert [e.train_loss for e in a.history] == [e.train_loss for e in b.history]
    assert [e.select_ccc for e in a.history] == [e.select_ccc for e in b.history]
    for name, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[name]), name
    c = train(corpus, TrainConfig(**cfg.to_dict() | {"seed": 2}), log=None)
    assert [e.train_loss for e in c.history] != [e.train_loss for e in a.history]


def test_computing_a_batch_in_pieces_gives_the_same_training(corpus):
    for loss in ("ccc", "mse"):
        cfg = TrainConfig(**SMALL | {"epochs": 2, "batch_size": 64, "loss": loss})
        whole = train(corpus, cfg, log=None, frames_per_pass=1 << 20)
        pieces = train(corpus, cfg, log=None, frames_per_pass=200)
        np.testing.assert_allclose([e.train_loss for e in pieces.history], [e.train_loss for e in whole.history],
                                   rtol=1e-4)


def test_two_targets_with_loss_weights_and_every_epoch_reported(corpus):
    seen = []
    cfg = TrainConfig(**SMALL | {"emo_dim_set": ("arousal", "valence"), "loss_weights": (0.7, 0.3),
                                 "feature_set": ("egemaps", "fasttext"), "epochs": 3})
    result = train(corpus, cfg, log=None, on_epoch=seen.append)
    assert [e.epoch for e in seen] == [1, 2, 3]
    assert [e.final for e in seen] == [False, False, True]
    assert set(result.last.score_ccc) == {"arousal", "valence"}
    assert result.last.score == pytest.approx(np.mean(list(result.last.score_ccc.values())))
    assert result.last.score == max(e.select for e in seen)  # the standard split scores where it selects


def test_early_stopping_and_a_callback_that_stops_the_run(corpus):
    result = train(corpus, TrainConfig(**SMALL | {"epochs": 50, "early_stop": 2, "lr": 5e-2}), log=None)
    last = result.last
    assert last.stop_reason == "early_stop" and last.epoch == last.best_epoch + 2
    assert [e.final for e in result.history] == [False] * (last.epoch - 1) + [True]

    class Stop(Exception):
        pass

    def stop_at_two(report):
        if report.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(corpus, TrainConfig(**SMALL), log=None, on_epoch=stop_at_two)


def test_best_weights_reproduce_the_best_devel_ccc(corpus):
    cfg = TrainConfig(**SMALL | {"epochs": 3})
    result = train(corpus, cfg, log=None)
    preds = result.predict(corpus.videos("devel"))
    assert ccc(preds[:, 0], corpus.labels_of("devel")[:, 0]) == pytest.approx(result.last.score_ccc["arousal"], abs=1e-6)


def test_diverging_training_is_an_error_not_a_nan_score(tiny_root, tmp_path):
    corpus = load_corpus(tiny_root, ["egemaps"], ["arousal"], cache_dir=tmp_path)
    poisoned = np.array(corpus.features["egemaps"])  # the loaded arrays are read-only maps of the cache
    poisoned[corpus.frames("train")] = 3e38  # overflows to inf in the first layer
    corpus.features["egemaps"] = poisoned
    with pytest.raises(TrainingDiverged, match="training loss became nan at epoch 1"):
        train(corpus, TrainConfig(**SMALL | {"normalize": ()}), log=None)


@pytest.mark.parametrize("change,field", [({"n_heads": 3}, "n_heads"), ({"hop_len": 80}, "hop_len"),
                                          ({"rnn": "rnn"}, "rnn"), ({"attn_dr": 1.0}, "attn_dr"),
                                          ({"loss_weights": (1, 2)}, "loss_weights"), ({"lr": 0}, "lr"),
                                          ({"normalize": ("vggish",)}, "normalize"), ({"loss": "huber"}, "loss"),
                                          ({"emo_dim_set": ("joy",)}, "emo_dim_set")])
def test_invalid_settings_name_the_field(corpus, change, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        train(corpus, TrainConfig(**SMALL | change), log=None)


def test_unknown_setting_is_refused():
    with pytest.raises(ConfigError, match="unknown training setting\\(s\\): d_model"):
        TrainConfig.from_dict({"d_model": 64})


def test_prediction_csvs_round_trip(corpus, tmp_path):
    cfg = TrainConfig(**SMALL | {"emo_dim_set": ("arousal", "valence"), "epochs": 1})
    result = train(corpus, cfg, log=None)
    preds = result.predict(corpus.videos("test"))
    aggregated = write_predictions(tmp_path, corpus, "test", preds, cfg.emo_dim_set)
    np.testing.assert_array_equal(read_predictions(tmp_path, corpus, "test", cfg.emo_dim_set), preds)
    lines = aggregated.read_text().splitlines()
    assert lines[0] == "id,timestamp,prediction_arousal,prediction_valence"
    assert len(lines) - 1 == len(preds)
    first = corpus.videos("test").start
    assert lines[1].startswith(f"{corpus.video_ids[first]},0,")
    per_video = tmp_path / "test" / "valence" / f"{corpus.video_ids[first]}.csv"
    assert per_video.read_text().splitlines()[0] == "timestamp,value,segment_id"


def test_cli_trains_and_ends_with_one_json_line(tiny_root, tmp_path):
    out = subprocess.run([sys.executable, "-m", "core.train", "--data", str(tiny_root), "--features", "egemaps",
                          "--target", "valence", "--normalize", "--attn", "--n_heads", "2", "--d_rnn", "8",
                          "--win_len", "50", "--hop_len", "25", "--batch_size", "16", "--epochs", "2",
                          "--save", str(tmp_path / "run")], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[1].startswith("epoch   1 | loss")
    summary = json.loads(lines[-1])
    assert summary["epochs_run"] == 2 and set(summary["score_ccc"]) == {"valence"} and summary["split"] == "devel"
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "test.csv").is_file()


def test_cli_reports_a_bad_setting_in_one_line(tiny_root):
    out = subprocess.run([sys.executable, "-m", "core.train", "--data", str(tiny_root), "--features", "egemaps",
                          "--attn", "--d_rnn", "10", "--n_heads", "4"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: n_heads: attention heads must divide d_rnn (10) (got 4)"


def test_training_on_a_fold_selects_on_one_fold_and_scores_another(corpus):
    from core.splits import make_splits
    split = make_splits(corpus, 3, seed=0)[0]
    result = train(corpus, TrainConfig(**SMALL | {"epochs": 3}), split, log=None)
    labels = corpus.labels_for(split.score)[:, [0]]
    assert ccc(result.predict(split.score)[:, 0], labels[:, 0]) == pytest.approx(result.last.score_ccc["arousal"],
                                                                                  abs=1e-6)
    best = result.history[result.last.best_epoch - 1]
    select_labels = corpus.labels_for(split.select)[:, 0]
    assert ccc(result.predict(split.select)[:, 0], select_labels) == pytest.approx(best.select_ccc["arousal"], abs=1e-6)
    assert best.select_ccc != result.last.score_ccc  # other videos


def test_a_training_frame_cap_stops_the_run_part_way_through_an_epoch(corpus):
    from core.windows import train_windows
    per_epoch = int(train_windows(corpus, corpus.videos("train"), 60, 30)[1].sum())
    cap = 2 * per_epoch + 1
    result = train(corpus, TrainConfig(**SMALL | {"epochs": 10, "max_frames": cap}), log=None)
    assert result.last.stop_reason == "max_frames" and result.last.epoch == 3 and result.last.part_way
    assert [e.frames for e in result.history[:2]] == [per_epoch, 2 * per_epoch]
    assert cap <= result.last.frames < cap + SMALL["batch_size"] * SMALL["win_len"]  # the batch that reached it


def test_predictions_stay_in_the_label_range(corpus):
    result = train(corpus, TrainConfig(**SMALL | {"epochs": 1, "lr": 1e-6, "out_biases": (5.0,)}), log=None)
    preds = result.predict(corpus.videos("devel"))
    assert preds.max() == 1.0  # the bias alone would put every prediction near 5


def test_bf16_predicts_within_a_hair_of_float32_and_trains(corpus):
    result = train(corpus, TrainConfig(**SMALL | {"epochs": 3}), log=None)
    labels = corpus.labels_of("devel")[:, 0]
    reference = ccc(result.predict(corpus.videos("devel"))[:, 0], labels)
    result.config = result.config.replace(precision="bf16")  # the same weights, predicted in bfloat16
    assert ccc(result.predict(corpus.videos("devel"))[:, 0], labels) == pytest.approx(reference, abs=0.005)
    bf16 = train(corpus, TrainConfig(**SMALL | {"precision": "bf16"}), log=None)
    assert bf16.last.score_ccc["arousal"] > 0.6  # as float32 training reaches (the control test above)


def test_a_config_key_ignores_the_seed_and_settings_left_at_their_defaults():
    base = TrainConfig(**SMALL)
    assert base.key() == base.replace(seed=7).key() == base.replace(precision="fp32").key()
    assert base.key() != base.replace(lr=0.001).key() != base.replace(precision="bf16").key()
