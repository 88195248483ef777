"""Plotly figures for the dashboard. Pure functions: numbers in (already computed by core), figures out."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))


def metric_bars(mets: dict[str, dict], names: dict[str, str], metrics: dict[str, str]) -> go.Figure:
    """Grouped bars, one group per metric, one bar per model, with 95% interval whiskers."""
    fig = go.Figure()
    for model, met in mets.items():
        values = [met[k] for k in metrics]
        lo = [met.get(f"{k}_ci", (np.nan, np.nan))[0] for k in metrics]
        hi = [met.get(f"{k}_ci", (np.nan, np.nan))[1] for k in metrics]
        fig.add_bar(name=names[model], x=list(metrics.values()), y=values,
                    error_y=dict(type="data", symmetric=False, array=np.subtract(hi, values),
                                 arrayminus=np.subtract(values, lo)))
    fig.update_layout(barmode="group", yaxis=dict(range=[0, 1.05], title="test split"),
                      title="Test metrics with 95% intervals", **LAYOUT)
    return fig


def accuracy_vs_latency(board: pd.DataFrame) -> go.Figure:
    fig = px.scatter(board, x="Latency p50 (ms)", y="Accuracy", size="Params (M)", color="Model", text="Model",
                     size_max=40, title="Accuracy vs latency (bubble size: parameters)")
    fig.update_traces(textposition="top center")
    fig.update_layout(showlegend=False, yaxis=dict(range=[0, 1.05]), **LAYOUT)
    return fig


def radar(mets: dict[str, dict], names: dict[str, str], metrics: dict[str, str]) -> go.Figure:
    labels = list(metrics.values())
    fig = go.Figure()
    for model, met in mets.items():
        values = [met[k] for k in metrics]
        fig.add_trace(go.Scatterpolar(r=values + values[:1], theta=labels + labels[:1], name=names[model],
                                      fill="toself", opacity=0.55))
    fig.update_layout(polar=dict(radialaxis=dict(range=[0, 1])), title="Main metrics", **LAYOUT)
    return fig


def roc(curves: dict[str, pd.DataFrame], points: dict[str, tuple[float, float]]) -> go.Figure:
    """ROC curves (fpr, tpr) with each model's current operating point as a marker."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="chance")
    for i, (name, c) in enumerate(curves.items()):
        colour = px.colors.qualitative.Plotly[i % 10]
        fig.add_scatter(x=c["fpr"], y=c["tpr"], mode="lines", name=name, line=dict(color=colour))
        fpr, tpr = points[name]
        fig.add_scatter(x=[fpr], y=[tpr], mode="markers", marker=dict(size=11, color=colour, symbol="x"),
                        showlegend=False, name=f"{name} operating point")
    fig.update_layout(title="ROC (x: operating point)", xaxis_title="1 − specificity",
                      yaxis_title="sensitivity", **LAYOUT)
    return fig


def pr(curves: dict[str, pd.DataFrame], points: dict[str, tuple[float, float]], prevalence: float) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[prevalence] * 2, mode="lines", line=dict(dash="dot", color="grey"),
                    name="no skill (test prevalence)")
    for i, (name, c) in enumerate(curves.items()):
        colour = px.colors.qualitative.Plotly[i % 10]
        fig.add_scatter(x=c["recall"], y=c["precision"], mode="lines", name=name, line=dict(color=colour))
        rec, prec = points[name]
        fig.add_scatter(x=[rec], y=[prec], mode="markers", marker=dict(size=11, color=colour, symbol="x"),
                        showlegend=False, name=f"{name} operating point")
    fig.update_layout(title="Precision–recall", xaxis_title="recall (sensitivity)",
                      yaxis_title="precision (PPV)", yaxis=dict(range=[0, 1.05]), **LAYOUT)
    return fig


def confusion(tn: int, fp: int, fn: int, tp: int, title: str) -> go.Figure:
    z = [[tn, fp], [fn, tp]]
    fig = px.imshow(z, x=["called normal", "called hemorrhage"], y=["normal", "hemorrhage"], text_auto=True,
                    color_continuous_scale="Blues", title=title)
    fig.update_layout(coloraxis_showscale=False, height=260, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def reliability(bins: dict[str, pd.DataFrame], ece: dict[str, float]) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="perfect")
    for name, b in bins.items():
        seen = b[b["count"] > 0]
        fig.add_scatter(x=seen["mean_prob"], y=seen["frac_pos"], mode="lines+markers",
                        name=f"{name} (ECE {ece[name]:.3f})",
                        marker=dict(size=4 + 18 * seen["count"] / b["count"].sum()), customdata=seen["count"],
                        hovertemplate="mean prob %{x:.2f}<br>hemorrhage %{y:.2f}<br>%{customdata} cases")
    fig.update_layout(title="Calibration (test; marker size: cases in bin)", xaxis_title="mean predicted probability",
                      yaxis_title="fraction with hemorrhage", **LAYOUT)
    return fig


def pvalue_matrix(p: pd.DataFrame) -> go.Figure:
    fig = px.imshow(p, text_auto=".3f", zmin=0, zmax=1, color_continuous_scale="RdBu",
                    title="DeLong paired test: p-value for equal AUC")
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10))
    return fig


def history(hist: pd.DataFrame, train_col: str | None, val_col: str, title: str) -> go.Figure:
    """Per-epoch lines: colour is the model, dash is train (solid) vs validation (dashed)."""
    cols = [c for c in (train_col, val_col) if c]
    long = hist.melt(id_vars=["model", "epoch"], value_vars=cols, var_name="curve")
    long["split"] = long["curve"].map({train_col: "train", val_col: "validation"})
    fig = px.line(long, x="epoch", y="value", color="model", line_dash="split", markers=True, title=title)
    fig.update_layout(yaxis_title=None, **LAYOUT)
    return fig
