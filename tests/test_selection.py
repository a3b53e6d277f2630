"""Selection and fusion rules of retrain-best that need no training: fast."""
import numpy as np
import optuna

from core.config import TrainConfig
from search.retrain.select import select
from search.study.record import config_attrs


def _study(name: str, configs: list[tuple[float, TrainConfig]]) -> optuna.Study:
    study = optuna.create_study(study_name=name, direction="maximize")
    for value, cfg in configs:
        study.add_trial(optuna.trial.create_trial(params={"lr": cfg.lr}, value=value, user_attrs=config_attrs(cfg),
                                                  distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1)}))
    return study


def test_a_config_shared_by_two_studies_is_retrained_and_fused_once():
    shared, own = TrainConfig(lr=0.01), TrainConfig(lr=0.02)
    studies = {"a": _study("a", [(0.6, shared), (0.5, TrainConfig(lr=0.03))]),
               "b": _study("b", [(0.7, shared), (0.4, own)])}
    candidates = select(studies, top_k=2, epochs=None, fingerprints={"a": "f", "b": "f"}, log=lambda line: None)
    assert [c.config.lr for c in candidates["a"]] == [0.01, 0.03]
    assert [c.config.lr for c in candidates["b"]] == [0.02]  # its best config is a's: taken once


def _library(configs: int = 3, seeds: int = 2, videos: int = 9):
    """Noisy models of random labels over `videos` videos of 20-60 frames, 3 folds, one target."""
    from search.retrain import fusion
    from search.retrain.select import Candidate
    rng = np.random.default_rng(0)
    bounds = np.concatenate([[0], np.cumsum(rng.integers(20, 60, videos))])
    labels = rng.uniform(-1, 1, (bounds[-1], 1)).astype(np.float32)
    folds = [np.arange(k, videos, 3) for k in range(3)]
    data = fusion.FusionData(labels, bounds, np.array([0, 50]), folds, ("valence",), folds_are_splits=True)
    models = [(c, s) for c in range(configs) for s in range(seeds)]
    oof = np.stack([labels + rng.normal(0, 0.5 + c, labels.shape) for c, _ in models], axis=1)
    library = fusion.Library("a", [Candidate("a", c, None, TrainConfig(lr=0.01 * (c + 1)), {}, "f")
                                   for c in range(configs)],
                             np.array([c for c, _ in models]), oof.astype(np.float32),
                             rng.uniform(-1, 1, (50, len(models), 1)).astype(np.float32))
    return data, library


def _spied_methods(data, library, fitted_on):
    """Every weighted method, each recording the videos it was fit on."""
    from search.retrain import fusion

    def spy(name, weights):
        def fit(lib, d, videos):
            fitted_on.append((name, set(videos.tolist())))
            return weights(lib, d, videos)
        return fusion.Method(name, library, data, fit)
    return [spy("chosen", fusion.chosen_weights), spy("mean", fusion.mean_weights),
            spy("ensemble", fusion.ensemble_weights),
            spy("weighted_ccc", fusion.per_target_weights(fusion.ccc_weights)),
            spy("weighted_fitted", fusion.per_target_weights(fusion.fitted_weights))]


def test_fitted_fusions_never_see_the_fold_they_score():
    from search.retrain import fusion
    data, library = _library()
    jobs = fusion.cross_fit_jobs(data)
    for fit_folds, held_out in jobs:
        assert not set(np.concatenate(fit_folds).tolist()) & set(held_out.tolist())
    fitted_on = []
    for method in _spied_methods(data, library, fitted_on):
        fused = fusion.cross_fit(method, method.run(jobs))
        assert fused.oof.shape == data.labels.shape and np.isfinite(fused.oof).all()
    assert len(fitted_on) == 5 * (3 + 1)  # each method: one fit per fold, then one on every video for test
    assert all(seen == set(range(9)) for _, seen in fitted_on[3::4])

    fits = []
    import core.fusion
    original = core.fusion.fit_fusion_model
    try:
        core.fusion.fit_fusion_model = lambda x, y, b, videos, seed: fits.append(videos.tolist()) or original(
            x, y, b, videos, seed, updates=2)
        x = library.seed_ensembles("oof")[:, :, 0]
        x_test = library.seed_ensembles("test")[:, :, 0]
        for fit_folds, held_out in jobs:
            fusion.fit_lstm(x, x_test, data, np.concatenate(fit_folds), held_out)
    finally:
        core.fusion.fit_fusion_model = original
    assert [sorted(set(range(9)) - set(f)) for f in fits] == [f.tolist() for f in data.folds]


def test_nested_cv_never_scores_a_video_with_a_model_or_choice_that_saw_it(monkeypatch):
    from search.retrain import choice
    data, library = _library()
    fitted_on, chosen_on, runs = [], [], []
    rule = choice.one_se_rule
    monkeypatch.setattr(choice, "one_se_rule", lambda preds, d, videos: chosen_on.append(set(videos.tolist()))
                        or rule(preds, d, videos))
    methods = _spied_methods(data, library, fitted_on)
    for m in methods:
        run = m.run
        m.run = lambda jobs, run=run: runs.append(jobs) or run(jobs)
    fusions, delivered, nested = choice.choose(methods, log=lambda line: None)
    jobs = runs[0]  # every method runs the same jobs: 3 outer, then 2 inner per outer fold
    assert len(jobs) == 3 + 3 * 2
    for fit_folds, videos in jobs:
        assert not set(np.concatenate(fit_folds).tolist()) & set(videos.tolist())
    for k, held_out in enumerate(data.folds):
        held = set(held_out.tolist())
        inner = jobs[3 + 2 * k: 3 + 2 * k + 2]
        assert all(not held & set(np.concatenate(f).tolist()) and not held & set(v.tolist()) for f, v in inner)
        assert not held & chosen_on[1 + k]  # chosen_on[0] is the delivered choice, made on every video
        assert not held & set(np.concatenate(jobs[k][0]).tolist())  # the prediction scored on fold k
    assert chosen_on[0] == set(range(9)) and len(nested.choices) == 3
    assert nested.estimate.low <= nested.estimate.estimate <= nested.estimate.high


def test_the_delivered_method_is_the_simplest_within_one_standard_error():
    from search.retrain.choice import one_se_rule
    data, _ = _library(videos=30)
    rng = np.random.default_rng(1)
    videos = np.arange(30)
    labels = data.labels
    close = {"chosen": labels + rng.normal(0, 0.8, labels.shape), "weighted_fitted": labels + rng.normal(0, 0.78, labels.shape)}
    assert one_se_rule(close, data, videos).delivered == "chosen"  # a lead inside the noise is no lead
    far = {"chosen": labels + rng.normal(0, 1.5, labels.shape), "weighted_fitted": labels + rng.normal(0, 0.2, labels.shape)}
    picked = one_se_rule(far, data, videos)
    assert picked.delivered == "weighted_fitted" and picked.scores["weighted_fitted"] > picked.scores["chosen"]


def test_a_config_ranked_on_fewer_seeds_than_asked_is_marked_so():
    from search.retrain.rank import rank
    from search.retrain.runs import SeedRun
    from search.retrain.select import Candidate
    full, short = (Candidate("a", n, 0.5, TrainConfig(lr=0.01 * (n + 1)), {"lr": 0.01}, "f") for n in range(2))

    def run(seed: int, value: float) -> SeedRun:
        return SeedRun(seed, [seed], [value], {"valence": [value]}, np.zeros((4, 1)), np.zeros((2, 1)), [1])
    log = []
    ranking = rank({"a": [full, short]}, {full.key: [run(0, 0.4), run(1, 0.5), run(2, 0.6)],
                                         short.key: [run(0, 0.7)]}, primary="a", seeds=3, splits=1, log=log.append)
    assert ranking["failed seeds"].tolist() == [2, 0] and ranking["seeds"].tolist() == [1, 3]
    assert "a#1: 0.7000 ± 0.0000 on 1 of 3 seeds (the others failed)" in "\n".join(log)
    assert "a#0: 0.5000" in "\n".join(log) and "a#0: 0.5000 ± 0.0816 on" not in "\n".join(log)


def test_refit_of_a_config_without_a_finished_run_names_the_study_and_trial():
    import pytest

    from core.errors import ConfigError
    from search.retrain.runs import refit
    from search.retrain.select import Candidate
    never = Candidate("valence", 7, 0.4, TrainConfig(), {}, "f")
    with pytest.raises(ConfigError, match=r"^refit: valence#7 \(study 'valence', trial 7\) completed no split run"):
        refit(None, never, [], None, log=lambda line: None)
