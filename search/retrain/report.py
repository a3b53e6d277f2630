"""The experiment report: one self-contained HTML file (plotly.js inlined) a browser opens offline.

Each section says in a sentence or two what it shows and how to read it.
"""
from __future__ import annotations

import html
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from search.retrain.choice import Nested
from search.retrain.fusion import Fused
from search.retrain.runs import Plan

COLORS = ("#222222", "#1f77b4", "#d62728")


@dataclass
class ReportData:
    study: optuna.Study
    storage: str  # masked
    look: int  # which look at this study's test set this is (1 = the first)
    looks_at_test_set: int  # looks at the same test set by every study, this one included
    code_version: str
    data_fingerprint: str
    targets: tuple[str, ...]
    folds: int
    ranking: pd.DataFrame  # one row per config: objective mean/std/min over seeds, per-seed values
    results: pd.DataFrame  # singles and fusions: out-of-fold and test CCC per target
    chosen: Fused  # the chosen config's seed ensemble
    delivered: Fused  # the method whose predictions are the default CSVs
    plan: Plan  # the corpus, the pooled videos and their rows
    pooled_labels: np.ndarray
    test_labels: np.ndarray | None
    nested: Nested  # the delivered choice's nested-CV estimate


def write_report(path: Path, data: ReportData) -> Path:
    sections = _search_sections(data) + _retrain_sections(data) + _prediction_sections(data)
    warning = ""
    if data.look > 1:
        warning = (f"<p class=warn>Test was looked at {data.look} times for this study: scores after the first "
                   "are no longer unbiased.</p>")
    elif data.looks_at_test_set > 1:
        warning = (f"<p class=warn>This test set was looked at {data.looks_at_test_set} times by all studies: "
                   "whatever was chosen after seeing an earlier look is no longer scored unbiased.</p>")
    meta = (f"study <b>{html.escape(data.study.study_name)}</b> in {html.escape(data.storage)} · look "
            f"{data.look} at test ({data.looks_at_test_set} at this test set by all studies) · data "
            f"{data.data_fingerprint} · code {html.escape(data.code_version)}")
    body = "\n".join(f"<section><h2>{html.escape(title)}</h2><p class=explain>{html.escape(text)}</p>{content}</section>"
                     for title, content, text in sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(data.study.study_name)}: retrain-best report</title>
<script>{plotly.offline.get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} .warn{{color:#a00}} .explain{{color:#444}}</style></head>
<body><h1>Retrain-best report</h1><p>{meta}</p>{warning}
{body}
</body></html>
""")
    return path


Section = tuple[str, str, str]  # title, HTML content, what it shows and how to read it


def _search_sections(data: ReportData) -> list[Section]:
    trials = data.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    objective = f"mean CCC over {data.folds} folds of train + devel videos" if data.folds > 1 else "devel CCC"
    return [
        ("Search: every trial's value", _history(trials),
         f"Each point is a trial's value ({objective}). Filled points finished; hollow ones were stopped early "
         "by ASHA (pruned) and show the value they had then, on fewer epochs or folds; crosses failed. The line is "
         "the best finished trial so far."),
        ("Search: parameter importances", _optuna_plot(optuna.visualization.plot_param_importances, data.study),
         f"How much of the variation of the value each parameter explains (Optuna's default evaluator), estimated "
         f"from the {len(complete)} finished trials: with few trials, read it as a hint, not a finding."),
        ("Search: parallel coordinates", _optuna_plot(_parallel, data.study),
         "One line per finished trial through its parameter values, coloured by its value: where the good lines "
         "bunch, the search found a good region."),
    ]


def _retrain_sections(data: ReportData) -> list[Section]:
    return [
        ("Top configs retrained with several seeds", _figure(_seed_spread(data.ranking)),
         "Each point is one seed's value of a config, retrained as in the search. The chosen config is the best "
         "mean over seeds, so it can differ from the search's best trial, whose single value may have been a "
         "lucky seed."),
        ("Top configs, ranked by their mean over seeds", _table(data.ranking.drop(columns=["config_key", "run ids",
                                                                                           "per seed"])),
         "search value: the trial's value in the search (one seed); mean, std, min: over the retrained seeds; "
         "failed seeds: seeds whose runs failed, so the config is ranked on fewer seeds than asked."),
        ("Singles and fusions", _table(data.results),
         f"pooled: CCC over the out-of-fold predictions of every pooled video ({'train + devel' if data.folds > 1 else 'devel'}), "
         "the protocol every fusion is scored with (fitted ones cross-validated over the same folds); SE of lead: "
         "the standard error of the best method's pooled score minus this one's (paired bootstrap over videos); "
         "test: scored once, after everything was chosen, with a 95 % bootstrap interval over test videos. "
         f"Delivered as the default predictions: {data.delivered.method}, the simplest method (chosen, mean, "
         "ensemble, weighted_ccc, weighted_fitted, lstm) within one standard error of the best. The best pooled "
         "score of several is biased upward; making the whole choice inside each outer fold from the other folds "
         f"alone and scoring it there (nested cross-validation) estimates it at {data.nested.estimate.estimate:.4f}, "
         f"95 % [{data.nested.estimate.low:.4f}, {data.nested.estimate.high:.4f}] (each fold delivered: "
         f"{', '.join(data.nested.choices)})."),
    ]


def _prediction_sections(data: ReportData) -> list[Section]:
    corpus = data.plan.corpus
    devel = np.asarray(corpus.videos("devel"))
    devel_rows = data.plan.rows(devel)
    parts = [("devel", devel, data.pooled_labels[devel_rows], data.chosen.oof[devel_rows],
              data.delivered.oof[devel_rows])]
    if data.test_labels is not None:
        parts.append(("test", np.asarray(corpus.videos("test")), data.test_labels, data.chosen.test,
                      data.delivered.test))
    return [(f"Predictions against labels: {name} videos",
             _figure(_traces(data, videos, labels, [("chosen config", chosen),
                                                    (f"delivered: {data.delivered.method}", delivered)])),
             "The three longest videos: the label (black), the chosen config's seed ensemble and the "
             "delivered predictions over time"
             + (" (out of fold: each video predicted by models that did not train on it)."
                if name == "devel" and data.folds > 1 else "."))
            for name, videos, labels, chosen, delivered in parts]


def _history(trials: list) -> str:
    """Every trial, pruned and failed ones too (Optuna's own plot shows finished trials only)."""
    fig = go.Figure()
    styles = {TrialState.COMPLETE: ("finished", "circle"), TrialState.PRUNED: ("pruned", "circle-open"),
              TrialState.FAIL: ("failed", "x")}
    for state, (name, symbol) in styles.items():
        shown = [(t.number, t.value if t.value is not None else _last(t)) for t in trials if t.state == state]
        shown = [(n, v) for n, v in shown if v is not None]
        if shown:
            fig.add_trace(go.Scatter(x=[n for n, _ in shown], y=[v for _, v in shown], mode="markers", name=name,
                                     marker={"symbol": symbol, "size": 8}))
    best, line = -np.inf, []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE:
            best = max(best, t.value)
        line.append((t.number, best if np.isfinite(best) else None))
    fig.add_trace(go.Scatter(x=[n for n, _ in line], y=[v for _, v in line], mode="lines", name="best finished"))
    fig.update_layout(xaxis_title="trial", yaxis_title="value", height=380)
    return _figure(fig)


def _last(trial) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


def _parallel(study: optuna.Study) -> go.Figure:
    fig = optuna.visualization.plot_parallel_coordinate(study)
    fig.update_layout(margin={"l": 90, "r": 90, "t": 110}, height=480)  # long parameter names stay apart
    return fig


def _optuna_plot(plot, study: optuna.Study) -> str:
    try:
        with warnings.catch_warnings():  # "few trials per regime": the section's text says how many there are
            warnings.simplefilter("ignore", UserWarning)
            return _figure(plot(study))
    except (ValueError, RuntimeError) as e:  # e.g. importances need two completed trials that differ
        return f"<p>Not available for this study: {html.escape(str(e))}</p>"


def _figure(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="", escape=True)


def _seed_spread(ranking: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for _, row in ranking.iterrows():
        fig.add_trace(go.Box(y=row["per seed"], name=f"{row['study']}#{row['trial']}", boxpoints="all", jitter=0.3))
    fig.update_layout(yaxis_title="value (one seed)", xaxis_title="config (study#trial)", showlegend=False, height=380)
    return fig


def _traces(data: ReportData, videos: np.ndarray, labels: np.ndarray, lines: list[tuple[str, np.ndarray]]) -> go.Figure:
    """Label and prediction lines over time, for the three longest of these videos."""
    corpus = data.plan.corpus
    lengths = corpus.lengths(videos)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    longest = sorted(np.argsort(-lengths, kind="stable")[:3])
    panels = [(k, j, t) for k in longest for j, t in enumerate(data.targets)]
    fig = make_subplots(rows=len(panels), cols=1, vertical_spacing=0.08,
                        subplot_titles=[f"video {corpus.video_ids[videos[k]]}: {t}" for k, _, t in panels])
    for row, (k, j, target) in enumerate(panels, start=1):
        rows = slice(first[k], first[k] + lengths[k])
        seconds = corpus.timestamps[corpus.frame_index([videos[k]])] / 1000
        for n, (name, values) in enumerate([("label", labels)] + lines):
            fig.add_trace(go.Scatter(x=seconds, y=values[rows, j], mode="lines", name=name, legendgroup=name,
                                     showlegend=row == 1, line={"width": 1.5 if n == 0 else 1, "color": COLORS[n]}),
                          row=row, col=1)
        fig.update_yaxes(range=[-1, 1], row=row, col=1)
    fig.update_xaxes(title_text="time in video (s)", row=len(panels), col=1)
    fig.update_layout(height=240 * len(panels) + 80)
    return fig
