"""The experiment report: one self-contained HTML file (plotly.js inlined) a browser opens offline."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from plotly.subplots import make_subplots

from core.corpus import Corpus
from search.fusion import Fused


COLORS = ("#222222", "#1f77b4", "#d62728")


@dataclass
class ReportData:
    study: optuna.Study
    storage: str  # masked
    evaluation_id: int
    evaluations_of_study: int  # how many times test was looked at for this study, this one included
    code_version: str
    data_fingerprint: str
    targets: tuple[str, ...]
    ranking: pd.DataFrame  # one row per config: trial, devel mean/std/min, seeds, test (chosen only)
    seed_scores: pd.DataFrame  # one row per run: trial, seed, devel mean CCC
    results: pd.DataFrame  # singles and fusions: devel and test CCC per target
    chosen: Fused  # the chosen config's seed ensemble, for the traces
    best_fusion: Fused | None
    corpus: Corpus
    devel_labels: np.ndarray
    test_labels: np.ndarray | None


def write_report(path: Path, data: ReportData) -> Path:
    sections = [
        ("Search: optimization history", _optuna_plot(optuna.visualization.plot_optimization_history, data.study)),
        ("Search: parameter importances (Optuna's default evaluator)", _optuna_plot(optuna.visualization.plot_param_importances,
                                                                data.study)),
        ("Search: parallel coordinates", _optuna_plot(optuna.visualization.plot_parallel_coordinate, data.study)),
        ("Top configs retrained with several seeds: devel CCC per seed", _figure(_seed_spread(data))),
        ("Top configs, ranked by mean devel CCC over seeds", _table(data.ranking.drop(columns=["config_key"]))),
        ("Singles and fusions: devel and test CCC", _table(data.results)),
    ]
    for partition, labels in (("devel", data.devel_labels), ("test", data.test_labels)):
        if labels is not None:
            sections.append((f"Predictions against labels: {partition} videos",
                             _figure(_traces(data, partition, labels))))
    warning = ""
    if data.evaluations_of_study > 1:
        warning = (f"<p class=warn>Test was evaluated {data.evaluations_of_study} times for this study: "
                   "scores after the first are no longer unbiased.</p>")
    meta = (f"study <b>{html.escape(data.study.study_name)}</b> in {html.escape(data.storage)} · evaluation "
            f"{data.evaluation_id} · data {data.data_fingerprint} · code {html.escape(data.code_version)}")
    body = "\n".join(f"<section><h2>{html.escape(title)}</h2>{content}</section>" for title, content in sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(data.study.study_name)}: retrain-best report</title>
<script>{plotly.offline.get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} .warn{{color:#a00}}</style></head>
<body><h1>Retrain-best report</h1><p>{meta}</p>{warning}
{body}
</body></html>
""")
    return path


def _optuna_plot(plot, study: optuna.Study) -> str:
    try:
        return _figure(plot(study))
    except (ValueError, RuntimeError) as e:  # e.g. importances need two completed trials that differ
        return f"<p>Not available for this study: {html.escape(str(e))}</p>"


def _figure(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="", escape=True)


def _seed_spread(data: ReportData) -> go.Figure:
    fig = go.Figure()
    for trial, rows in data.seed_scores.groupby("config", sort=False):
        fig.add_trace(go.Box(y=rows["devel CCC"], name=str(trial), boxpoints="all", jitter=0.3))
    fig.update_layout(yaxis_title="devel CCC (mean over targets)", xaxis_title="config (study trial)",
                      showlegend=False, height=380)
    return fig


def _traces(data: ReportData, partition: str, labels: np.ndarray) -> go.Figure:
    """Label, chosen config and best fusion over time, for the three longest videos of the partition."""
    corpus = data.corpus
    first, bounds = corpus.videos(partition).start, corpus.bounds(partition)
    videos = sorted(np.argsort(-np.diff(bounds), kind="stable")[:3])  # the three longest, in partition order
    lines = [("label", labels), ("chosen config (seed ensemble)", getattr(data.chosen, partition))]
    if data.best_fusion is not None:
        lines.append((f"fusion: {data.best_fusion.method}", getattr(data.best_fusion, partition)))
    panels = [(k, j, t) for k in videos for j, t in enumerate(data.targets)]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=False, vertical_spacing=0.06,
                        subplot_titles=[f"video {corpus.video_ids[first + k]}: {t}" for k, _, t in panels])
    seconds = corpus.timestamps[corpus.frames(partition)] / 1000
    for row, (k, j, target) in enumerate(panels, start=1):
        rows = slice(bounds[k], bounds[k + 1])
        for n, (name, values) in enumerate(lines):
            fig.add_trace(go.Scatter(x=seconds[rows], y=values[rows, j], mode="lines", name=name, legendgroup=name,
                                     showlegend=row == 1, line={"width": 1.5 if n == 0 else 1, "color": COLORS[n]}),
                          row=row, col=1)
        fig.update_yaxes(range=[-1, 1], row=row, col=1)
    fig.update_xaxes(title_text="time in video (s)", row=len(panels), col=1)
    fig.update_layout(height=220 * len(panels) + 80)
    return fig
