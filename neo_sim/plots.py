"""plotly figures and the Chrome trace of the lanes.

HTML files reference one `plotly.min.js` written beside them (`include_plotlyjs="directory"`):
figures display offline, and a folder of several figures carries the 4.8 MB bundle once.
Pass `self_contained=True` to `save_html` to embed it in the file instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from neo_sim.lanes import Lane, Span

log = logging.getLogger(__name__)

LANE_COLORS = {Lane.GPU: "#2b6cb0", Lane.CPU: "#dd6b20", Lane.H2D: "#38a169", Lane.D2H: "#805ad5"}
# One colour per series (policy, host), the same in every panel of a figure.
PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
)  # fmt: skip
UNITS = {"throughput_req": "req/s", "throughput_tok": "tokens/s", "goodput": "req/s"}
TIMELINE_OPENS_ON = 2  # iterations visible when a timeline opens; the rest by zoom or slider


def unit_of(metric: str) -> str:
    """The unit a summary metric is in: rates for throughputs, seconds otherwise."""
    return next((u for prefix, u in UNITS.items() if metric.startswith(prefix)), "s")


def save_html(fig: go.Figure, path: str | Path, self_contained: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True if self_contained else "directory", full_html=True)
    return path


def save_png(fig: go.Figure, path: str | Path, width: int = 1400, height: int = 700) -> Path | None:
    """A PNG of the figure, for reports and READMEs that cannot embed HTML. Needs the `png`
    extra (kaleido) and a Chromium it can drive; without them, logs how to get them and
    returns None (the HTML is the figure of record)."""
    path = Path(path)
    try:
        import kaleido  # noqa: F401  (plotly's exporter; imported here only to name it)

        fig.write_image(path, width=width, height=height, scale=1)
    except Exception as exc:  # ImportError, or kaleido's own "no browser" errors
        log.warning(
            "no PNG written to %s (%s: %s); `pip install -e .[png]` and a Chromium "
            "(Debian: apt-get install chromium) make it work",
            path,
            type(exc).__name__,
            exc,
        )
        return None
    return path


def load_latency_figure(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("per_token_latency_p50", "ttft_p50", "throughput_req_s"),
    x: str = "rate",
    group: str = "policy",
    title: str = "",
) -> go.Figure:
    """One panel per metric against the offered rate, one line per policy (or host)."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=list(metrics))
    groups = df.sort_values(x).groupby(group, sort=False)
    for i, (name, part) in enumerate(groups):
        color = PALETTE[i % len(PALETTE)]
        for col, metric in enumerate(metrics, start=1):
            fig.add_trace(
                go.Scatter(
                    x=part[x],
                    y=part[metric],
                    mode="lines+markers",
                    name=str(name),
                    legendgroup=str(name),
                    showlegend=col == 1,
                    line={"color": color},
                    marker={"color": color},
                ),
                row=1,
                col=col,
            )
            fig.update_xaxes(title_text=f"{x} (req/s)" if x == "rate" else x, row=1, col=col)
    for col, metric in enumerate(metrics, start=1):
        fig.update_yaxes(title_text=unit_of(metric), row=1, col=col)
    fig.update_layout(title=title or "load vs latency", height=420, width=420 * len(metrics))
    return fig


def bar_figure(
    df: pd.DataFrame, x: str, y: str, group: str | None = None, title: str = "", y_title: str = ""
) -> go.Figure:
    """Bars of `y` per `x` (grouped by `group`): throughput vs host CPU size and similar."""
    fig = go.Figure()
    groups = df.groupby(group, sort=False) if group else [("", df)]
    for name, part in groups:
        fig.add_trace(
            go.Bar(
                x=part[x].astype(str),
                y=part[y],
                name=str(name),
                text=[f"{v:.3g}" for v in part[y]],
                textposition="outside",
            )
        )
    fig.update_layout(
        title=title, barmode="group", yaxis_title=y_title or y, xaxis_title=x, height=450, width=900
    )
    return fig


def comparison_figure(
    summaries: pd.DataFrame, metrics: Sequence[str], series: str = "policy", title: str = ""
) -> go.Figure:
    """One panel per metric (its own axis and unit), one bar per policy, each bar labelled
    with its value and its ratio to the first policy."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=list(metrics))
    names = [str(n) for n in summaries[series]]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    for col, metric in enumerate(metrics, start=1):
        values = summaries[metric].astype(float).tolist()
        base = values[0]
        labels = [f"{v:.3g}<br>{v / base:.2f}x" if base else f"{v:.3g}" for v in values]
        fig.add_trace(
            go.Bar(
                x=names,
                y=values,
                marker_color=colors,
                text=labels,
                textposition="outside",
                showlegend=False,
                cliponaxis=False,
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(title_text=unit_of(metric), row=1, col=col)
    fig.update_layout(
        title=title or f"ratios to {names[0]}", height=480, width=max(900, 280 * len(metrics))
    )
    return fig


def ratio_heatmap_figure(
    frame: pd.DataFrame, x: str, y: str, value: str, title: str = "", note: str | None = None
) -> go.Figure:
    """A heat map of ratios (1 = parity) over (x, y) cells, coloured on a log scale so that
    2x and 0.5x look equally far from parity; every cell labelled with its ratio, and with a
    '*' where the boolean column `note` is true."""
    import math

    wide = frame.pivot_table(index=y, columns=x, values=value, sort=False)
    marks = (
        frame.pivot_table(index=y, columns=x, values=note, sort=False, aggfunc="max")
        if note
        else None
    )
    logs = wide.map(lambda v: math.log2(v) if v and v > 0 else float("nan"))
    reach = max(1.0, float(logs.abs().max().max()))
    text = [
        [
            "-" if v != v else f"{v:.2f}{'*' if marks is not None and marks.loc[r, c] else ''}"
            for c, v in row.items()
        ]
        for r, row in wide.iterrows()
    ]
    ticks = [t for t in range(-math.ceil(reach), math.ceil(reach) + 1)]
    fig = go.Figure(
        go.Heatmap(
            z=logs.values,
            x=list(wide.columns),
            y=list(wide.index),
            zmid=0,
            zmin=-reach,
            zmax=reach,
            colorscale="RdBu",
            text=text,
            texttemplate="%{text}",
            colorbar={
                "title": value,
                "tickvals": ticks,
                "ticktext": [f"{2.0**t:g}x" for t in ticks],
            },
        )
    )
    fig.update_layout(
        title=title, xaxis_title=x, yaxis_title=y, height=160 + 40 * len(wide), width=1500
    )
    return fig


def timeline_figure(timeline: Iterable[tuple[int, float, Span]], title: str = "") -> go.Figure:
    """Gantt chart of the four lanes over the recorded iterations (milliseconds)."""
    timeline = list(timeline)
    rows = [
        (
            span.lane,
            (start + span.start_s) * 1e3,
            span.duration_s * 1e3,
            f"step {step}: {span.label}",
        )
        for step, start, span in timeline
    ]
    fig = go.Figure()
    for lane in Lane:
        part = [r for r in rows if r[0] == lane]
        if not part:
            continue
        fig.add_trace(
            go.Bar(
                y=[lane.value] * len(part),
                x=[r[2] for r in part],
                base=[r[1] for r in part],
                orientation="h",
                name=lane.value,
                marker_color=LANE_COLORS[lane],
                hovertext=[r[3] for r in part],
                hoverinfo="text+x",
            )
        )
    fig.update_layout(
        title=title or "per-iteration lanes",
        barmode="overlay",
        xaxis_title="ms",
        yaxis={"categoryorder": "array", "categoryarray": [x.value for x in reversed(Lane)]},
        height=380,
        width=1200,
    )
    # Open on a few iterations, the first ones with CPU work if any (where pipelining and its
    # bubbles show), so each layer's tasks are visible; the slider and zoom reach the rest.
    starts = sorted({start for _, start, _ in timeline})
    with_cpu = sorted({start for _, start, span in timeline if span.lane == Lane.CPU})
    first = starts.index(with_cpu[0]) if with_cpu else 0
    if len(starts) > first + 1 and rows:
        last = min(first + TIMELINE_OPENS_ON, len(starts) - 1)
        window = [starts[first] * 1e3, starts[last] * 1e3]
        fig.update_xaxes(range=window, rangeslider={"visible": True})
    return fig


def batch_composition_figure(iterations: pd.DataFrame, title: str = "") -> go.Figure:
    """What each iteration carried, over time: prefill tokens, GPU decodes, CPU decodes."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    t = iterations["start_s"]
    for col, name in (("num_gpu_decodes", "GPU decodes"), ("num_cpu_decodes", "CPU decodes")):
        fig.add_trace(
            go.Scatter(x=t, y=iterations[col], name=name, stackgroup="seqs", mode="lines"),
            secondary_y=False,
        )
    fig.add_trace(
        go.Scatter(
            x=t,
            y=iterations["prefill_tokens"],
            name="prefill tokens",
            mode="lines",
            line={"dash": "dot"},
        ),
        secondary_y=True,
    )
    fig.update_layout(title=title or "batch composition over time", height=420, width=1100)
    fig.update_xaxes(title_text="simulated time (s)")
    fig.update_yaxes(title_text="decodes per iteration", secondary_y=False)
    fig.update_yaxes(title_text="prefill tokens per iteration", secondary_y=True)
    return fig


def scatter_figure(
    x: Sequence[float],
    y: Sequence[float],
    x_title: str,
    y_title: str,
    title: str = "",
    names: Sequence[str] | None = None,
) -> go.Figure:
    """Predicted vs measured (or any x/y) with the y = x diagonal."""
    fig = go.Figure(go.Scatter(x=list(x), y=list(y), mode="markers", text=names, opacity=0.6))
    if len(x):
        lo, hi = min(min(x), min(y)), max(max(x), max(y))
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                name="y = x",
                line={"dash": "dash", "color": "gray"},
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=500,
        width=600,
        showlegend=False,
    )
    return fig


def write_chrome_trace(timeline: Iterable[tuple[int, float, Span]], path: str | Path) -> Path:
    """Chrome trace-event JSON (open in Perfetto or chrome://tracing): one thread per lane."""
    tids = {lane: i for i, lane in enumerate(Lane)}
    events = [
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": lane.value}}
        for lane, tid in tids.items()
    ]
    for step, start, span in timeline:
        events.append(
            {
                "name": span.label,
                "cat": span.lane.value,
                "ph": "X",
                "pid": 1,
                "tid": tids[span.lane],
                "ts": (start + span.start_s) * 1e6,
                "dur": span.duration_s * 1e6,
                "args": {
                    "step": step,
                    "task": span.task.value,
                    "layer": span.layer,
                    "sub_batch": span.sub_batch,
                },
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return path
