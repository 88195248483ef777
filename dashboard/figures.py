"""Plotly figures for the dashboard. Pure functions: numbers in (already computed by core), figures out.

Every figure colours a model with `model_colours` (by its place in the order that orders every run, the registry's:
dashboard.frame.Run.colours), so a model has one colour on every page whatever a filter shows, and keeps its legend
outside the plotting area, right of it, clear of the axis titles."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# Plotly's ten, then ten more picked greedily for the largest CIELAB distance to those before (>= 21.8 between any
# two), none grey (the reference lines' colour) nor too dark for the dark theme.
PALETTE = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880", "#FF97FF",
           "#FECB52", "#16FF32", "#1F77B4", "#FE00CE", "#24796C", "#109618", "#6C7C32", "#B279A2", "#AA0DFE",
           "#E5C494", "#86CE00")
REFERENCE = dict(dash="dot", color="grey")
LEGEND = dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top")
LAYOUT = dict(margin=dict(l=10, r=10, t=50, b=10), legend=LEGEND)
# Fewer ROC/PR vertices than this: a model with few distinct scores (k-NN's vote shares, a saturated ensemble),
# whose few segments hide along the axes unless their vertices are drawn too.
FEW_VERTICES = 12


def model_colours(order: Sequence[str]) -> dict[str, str]:
    """Each model's colour (display name -> colour), by its place in `order`."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(order)}


def coloured(name: str, colours: dict[str, str]) -> str:
    """A model's name in its colour, for axis labels (Plotly renders this bit of HTML)."""
    return f"<span style='color:{colours[name]}'>{name}</span>"


def metric_bars(mets: dict[str, dict], names: dict[str, str], metrics: dict[str, str], colours: dict[str, str],
                measured: str) -> go.Figure:
    """Grouped bars, one group per metric, one bar per model, with 95% interval whiskers."""
    fig = go.Figure()
    for model, met in mets.items():
        values = [met[k] for k in metrics]
        lo = [(met.get(f"{k}_ci") or (np.nan, np.nan))[0] for k in metrics]
        hi = [(met.get(f"{k}_ci") or (np.nan, np.nan))[1] for k in metrics]
        fig.add_bar(name=names[model], x=list(metrics.values()), y=values, marker_color=colours[names[model]],
                    error_y=dict(type="data", symmetric=False, array=np.subtract(hi, values),
                                 arrayminus=np.subtract(values, lo)))
    fig.update_layout(barmode="group", yaxis=dict(range=[0, 1.05], title=measured),
                      title="Metrics with 95% intervals", **LAYOUT)
    return fig


def metric_table(mets: dict[str, dict], names: dict[str, str], metrics: dict[str, str], colours: dict[str, str],
                 measured: str) -> go.Figure:
    """A heat table: one row per model (in the given order, top first), one column per metric."""
    rows = list(mets)
    z = [[mets[m][k] for k in metrics] for m in rows]
    fig = go.Figure(go.Heatmap(z=z, x=list(metrics.values()), y=[names[m] for m in rows], zmin=0, zmax=1,
                               colorscale="Viridis", texttemplate="%{z:.2f}", colorbar=dict(title="value"),
                               hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickvals=[names[m] for m in rows],
                     ticktext=[coloured(names[m], colours) for m in rows])
    fig.update_layout(title=f"Metrics per model ({measured})", height=120 + 28 * len(rows), **LAYOUT)
    return fig


def accuracy_vs_latency(board: pd.DataFrame, colours: dict[str, str], accuracy: str) -> go.Figure:
    """One bubble per model (size: parameters), named in the legend and on hover, never in text that could collide."""
    fig = go.Figure()
    scale = 40 / max(1e-9, board["Params (M)"].max() ** 0.5)
    for _, row in board.iterrows():
        fig.add_scatter(x=[row["Latency p50 (ms)"]], y=[row["Accuracy"]], mode="markers", name=row["Model"],
                        marker=dict(size=8 + scale * row["Params (M)"] ** 0.5, color=colours[row["Model"]],
                                    opacity=0.8, line=dict(width=1, color="white")),
                        hovertemplate=f"{row['Model']}<br>%{{x:.1f}} ms<br>accuracy %{{y:.3f}}<br>"
                                      f"{row['Params (M)']:.2f} M parameters<extra></extra>")
    # Log latency: a k-NN answers in a tenth of a millisecond, an ensemble waits for all its members.
    fig.update_layout(title="Accuracy vs latency (bubble area: parameters)",
                      xaxis=dict(type="log", title="latency p50, batch 1 (ms, log scale)"),
                      yaxis=dict(range=[0, 1.05], title=accuracy), **LAYOUT)
    return fig


def _curve(fig: go.Figure, name: str, x, y, colour: str) -> None:
    """A model's ROC or PR curve; with few vertices they are drawn too, so that it cannot pass for a lone point."""
    mode = "lines+markers" if len(x) < FEW_VERTICES else "lines"
    fig.add_scatter(x=x, y=y, mode=mode, name=name, legendgroup=name, line=dict(color=colour, width=2),
                    marker=dict(size=5))


def _operating_point(fig: go.Figure, name: str, x: float, y: float, threshold: float, colour: str, text: str) -> None:
    """The model's operating point: a large cross in its colour, labelled on hover with its threshold."""
    fig.add_scatter(x=[x], y=[y], mode="markers", legendgroup=name, showlegend=False, name=f"{name} operating point",
                    marker=dict(size=13, color=colour, symbol="x", line=dict(width=1, color="white")),
                    hovertemplate=f"<b>{name}</b> at t = {threshold:.3f}<br>{text}<extra></extra>")


def roc(curves: dict[str, pd.DataFrame], points: dict[str, tuple[float, float, float]], colours: dict[str, str],
        measured: str) -> go.Figure:
    """ROC curves (fpr, tpr) with each model's operating point (fpr, tpr, threshold) as a cross."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=REFERENCE, name="chance")
    for name, c in curves.items():
        _curve(fig, name, c["fpr"], c["tpr"], colours[name])
        fpr, tpr, thr = points[name]
        _operating_point(fig, name, fpr, tpr, thr, colours[name],
                         f"sensitivity {tpr:.3f}, specificity {1 - fpr:.3f}")
    fig.update_layout(title=f"ROC ({measured}; ×: operating point)", xaxis_title="1 − specificity",
                      yaxis_title="sensitivity", **LAYOUT)
    return fig


def pr(curves: dict[str, pd.DataFrame], points: dict[str, tuple[float, float, float]], prevalence: float,
       colours: dict[str, str], measured: str) -> go.Figure:
    """Precision-recall curves with each model's operating point (recall, precision, threshold) as a cross."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[prevalence] * 2, mode="lines", line=REFERENCE, name="no skill (prevalence)")
    for name, c in curves.items():
        _curve(fig, name, c["recall"], c["precision"], colours[name])
        rec, prec, thr = points[name]
        _operating_point(fig, name, rec, prec, thr, colours[name], f"recall {rec:.3f}, precision {prec:.3f}")
    fig.update_layout(title=f"Precision–recall ({measured}; ×: operating point)", xaxis_title="recall (sensitivity)",
                      yaxis_title="precision (PPV)", yaxis=dict(range=[0, 1.05]), **LAYOUT)
    return fig


def confusion(tn: int, fp: int, fn: int, tp: int, title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=[[tn, fp], [fn, tp]], x=["called normal", "called hemorrhage"],
                               y=["normal", "hemorrhage"], texttemplate="%{z}", colorscale="Blues", showscale=False,
                               hovertemplate="%{y}, %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=260, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def reliability(bins: dict[str, pd.DataFrame], ece: dict[str, float], colours: dict[str, str],
                measured: str) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=REFERENCE, name="perfect")
    for name, b in bins.items():
        seen = b[b["count"] > 0]
        fig.add_scatter(x=seen["mean_prob"], y=seen["frac_pos"], mode="lines+markers", customdata=seen["count"],
                        name=f"{name} (ECE {ece[name]:.3f})", line=dict(color=colours[name]),
                        marker=dict(size=4 + 18 * seen["count"] / b["count"].sum(), color=colours[name]),
                        hovertemplate=f"{name}<br>mean prob %{{x:.3f}}<br>hemorrhage %{{y:.3f}}<br>"
                                      "%{customdata} cases<extra></extra>")
    fig.update_layout(title=f"Calibration ({measured}; marker size: cases in bin)",
                      xaxis=dict(range=[0, 1], title="mean predicted probability"),
                      yaxis=dict(range=[0, 1.02], title="fraction with hemorrhage"), **LAYOUT)
    return fig


# Significance bands of a p-value, most significant last; the colour says which, the exact p is on hover.
P_BANDS = ((0.05, "not significant (p ≥ 0.05)"), (0.01, "p < 0.05"), (0.001, "p < 0.01"), (0.0, "p < 0.001"))
P_COLOURS = ("#3b4252", "#f6c85f", "#f28e2b", "#e15759")


def p_band(p: float) -> float:
    """The index in P_BANDS of a p-value (NaN stays NaN: the diagonal, or a one-class test)."""
    return np.nan if p != p else float(next(i for i, (floor, _) in enumerate(P_BANDS) if p >= floor))


def significance_map(p: pd.DataFrame, colours: dict[str, str], measured: str) -> go.Figure:
    """Pairwise DeLong tests as a heat map of significance bands; the p-value is shown on hover only."""
    names = list(p.index)
    bands = np.array(p.map(p_band), dtype=float)   # a copy: the diagonal is blanked below
    np.fill_diagonal(bands, np.nan)
    steps = len(P_BANDS)
    scale = [[edge, colour] for i, colour in enumerate(P_COLOURS) for edge in (i / steps, (i + 1) / steps)]
    fig = go.Figure(go.Heatmap(
        z=bands, x=names, y=names, customdata=p.to_numpy(), zmin=-0.5, zmax=steps - 0.5, colorscale=scale,
        xgap=2, ygap=2, hovertemplate="%{y} vs %{x}<br>DeLong p = %{customdata:.3g}<extra></extra>",
        colorbar=dict(tickvals=list(range(steps)), ticktext=[label for _, label in P_BANDS], title="equal AUC?")))
    ticks = [coloured(n, colours) for n in names]
    fig.update_xaxes(tickvals=names, ticktext=ticks, tickangle=-45)
    fig.update_yaxes(tickvals=names, ticktext=ticks, autorange="reversed")
    fig.update_layout(title=f"DeLong paired test for equal AUC ({measured})", height=max(450, 200 + 24 * len(names)),
                      **LAYOUT)
    return fig


def history(hist: pd.DataFrame, train_col: str | None, val_col: str, title: str, colours: dict[str, str]) -> go.Figure:
    """Per-epoch lines, one legend entry per model (its colour): train solid, validation dashed, told apart by
    two grey entries at the legend's end."""
    fig = go.Figure()
    styles = {train_col: ("train", "solid"), val_col: ("validation", "dash")} if train_col else {val_col: ("", "solid")}
    for model, rows in hist.groupby("model", sort=False):
        for i, (col, (split, dash)) in enumerate(styles.items()):
            fig.add_scatter(x=rows["epoch"], y=rows[col], mode="lines+markers", name=model, legendgroup=model,
                            showlegend=i == 0, line=dict(color=colours[model], dash=dash), marker=dict(size=5),
                            hovertemplate=f"{model} {split}<br>epoch %{{x}}: %{{y:.3f}}<extra></extra>")
    if train_col:
        for split, dash in styles.values():
            fig.add_scatter(x=[None], y=[None], mode="lines", name=split, legendgroup="style",
                            line=dict(color="grey", dash=dash))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=None, **LAYOUT)
    return fig
