"""Shared pieces of every dashboard: datasource, variables, annotations, panel factories, layout.

Every panel goes through :class:`Board.add`, which gives it a stable id and grid position (so
regenerating produces byte-identical JSON) and points its queries at the `$datasource` variable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import annotationslist as annolist_builder
from grafana_foundation_sdk.builders import bargauge as bargauge_builder
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import heatmap as heatmap_builder
from grafana_foundation_sdk.builders import prometheus as prometheus_builder
from grafana_foundation_sdk.builders import stat as stat_builder
from grafana_foundation_sdk.builders import statetimeline as statetimeline_builder
from grafana_foundation_sdk.builders import table as table_builder
from grafana_foundation_sdk.builders import timeseries as timeseries_builder
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from grafana.promql import CLUSTER

# The provisioned datasource (grafana/provisioning/datasources/gpu-watchdog.yml) has this uid;
# the `datasource` variable defaults to it, and every query goes through the variable.
DATASOURCE_UID = "gpu-watchdog-prometheus"
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
GRAFANA_BUILTIN = models.DataSourceRef(type_val="grafana", uid="-- Grafana --")

# Tag the agent puts on every finding it posts to Grafana's annotation API (issue #6):
# [gpu-watchdog, <alertname>, <node>].
FINDINGS_TAG = "gpu-watchdog"
DASHBOARD_TAGS = ["gpu-watchdog"]

GRID_WIDTH = 24
# Title of the dropdown on every dashboard that links to the other gpu-watchdog dashboards.
DASHBOARDS_LINK = "gpu-watchdog dashboards"

# Colours by meaning, so every dashboard reads the same.
OK, WARN, BAD, INFO = "green", "orange", "red", "blue"


@dataclass(frozen=True)
class Query:
    """One PromQL target. `instant` for tables and stats of "now"; `table` formats rows per series."""

    expr: str
    legend: str | None = None
    instant: bool = False
    table: bool = False
    heatmap: bool = False


def thresholds(*steps: tuple[float | None, str]) -> cogbuilder.Builder[models.ThresholdsConfig]:
    """Absolute thresholds: the first step's value is None (the base colour)."""
    return (
        dashboard_builder.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def value_text(mapping: dict[str, tuple[str, str]]) -> list[models.ValueMapping]:
    """Value -> (text, colour) mappings, e.g. {"0": ("down", "red")}."""
    options = {value: models.ValueMappingResult(text=text, color=color) for value, (text, color) in mapping.items()}
    return [models.ValueMap(options=options)]


def _target(query: Query, ref_id: str) -> prometheus_builder.Dataquery:
    target = (
        prometheus_builder.Dataquery()
        .expr(query.expr)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
        .editor_mode(prometheus_models.QueryEditorMode.CODE)
    )
    if query.legend is not None:
        target = target.legend_format(query.legend)
    target = target.instant() if query.instant else target.range()
    if query.table:
        target = target.format(prometheus_models.PromQueryFormat.TABLE)
    elif query.heatmap:
        target = target.format(prometheus_models.PromQueryFormat.HEATMAP)
    return target


PanelBuilder = (
    stat_builder.Panel
    | timeseries_builder.Panel
    | table_builder.Panel
    | heatmap_builder.Panel
    | bargauge_builder.Panel
    | statetimeline_builder.Panel
    | annolist_builder.Panel
)


@dataclass(frozen=True)
class PanelSpec:
    """A panel to place: its builder (without targets) and the queries it runs."""

    builder: PanelBuilder
    queries: Sequence[Query]
    width: int
    height: int


def stat(
    title: str,
    description: str,
    query: Query | str,
    unit: str,
    *,
    steps: Sequence[tuple[float | None, str]] = ((None, INFO),),
    mappings: list[models.ValueMapping] | None = None,
    show_name: bool = False,
    width: int = 4,
    height: int = 4,
) -> PanelSpec:
    """A big number; `show_name` shows the series name (its legend) instead, e.g. a state.

    A plain expression is an instant query: a stat shows the value now.
    """
    if isinstance(query, str):
        query = Query(query, instant=True)
    panel = (
        stat_builder.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .thresholds(thresholds(*steps))
        .color_mode(common_models.BigValueColorMode.BACKGROUND)
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        panel = panel.mappings(mappings)
    if show_name:
        panel = panel.text_mode(common_models.BigValueTextMode.NAME).graph_mode(common_models.BigValueGraphMode.NONE)
    return PanelSpec(panel, [query], width, height)


def count_stat(
    title: str, description: str, expr: str, *, alarm: str | None = WARN, at: float = 1.0, width: int = 4
) -> PanelSpec:
    """How many things are in a state, e.g. lost GPUs: green at 0, `alarm` from `at` on.

    `or vector(0)` makes "none" read 0 rather than "No data". `alarm=None`: a plain count.
    """
    steps: Sequence[tuple[float | None, str]] = ((None, OK), (at, alarm)) if alarm else ((None, INFO),)
    return stat(title, description, f"{expr} or vector(0)", "none", steps=steps, width=width)


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    *,
    steps: Sequence[tuple[float | None, str]] | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
    stacked: bool = False,
    width: int = 12,
    height: int = 8,
) -> PanelSpec:
    panel = (
        timeseries_builder.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.TABLE)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    if steps:
        panel = panel.thresholds(thresholds(*steps)).thresholds_style(
            common_builder.GraphThresholdsStyleConfig().mode(common_models.GraphThresholdsStyleMode.DASHED)
        )
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    if stacked:
        panel = panel.stacking(common_builder.StackingConfig().mode(common_models.StackingMode.NORMAL))
    return PanelSpec(panel, queries, width, height)


def ratio_timeseries(title: str, description: str, queries: Sequence[Query], *, width: int = 12) -> PanelSpec:
    """A fraction over time (utilization, allocation) on a fixed 0-100 % axis."""
    return timeseries(title, description, queries, "percentunit", min_value=0, max_value=1, width=width)


# Table columns to hide for a table of label sets, e.g. an `_info` series (its value is always 1).
LABELS_ONLY = ("Time", "__name__", "instance", "job", "Value")


def table(
    title: str,
    description: str,
    exprs: Sequence[str],
    *,
    unit: str = "none",
    hidden_columns: Sequence[str] = ("Time", "__name__", "instance", "job"),
    columns: Mapping[str, tuple[str, str]] | None = None,
    steps: Sequence[tuple[float | None, str]] = ((None, INFO),),
    width: int = 24,
    height: int = 8,
) -> PanelSpec:
    """A table of the rows `exprs` return now; several queries are merged into one row per label set.

    `columns` names and sets the unit of value columns: {"Value #B": ("utilization", "percentunit")}.
    """
    columns = columns or {}
    panel = (
        table_builder.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .align(common_models.FieldTextAlignment.AUTO)
        .filterable(True)
        .thresholds(thresholds(*steps))
        .with_transformation(models.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            models.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {name: True for name in hidden_columns},
                    "renameByName": {column: name for column, (name, _unit) in columns.items()},
                },
            )
        )
    )
    for name, column_unit in columns.values():
        panel = panel.override_by_name(name, [models.DynamicConfigValue(id_val="unit", value=column_unit)])
    return PanelSpec(panel, [Query(expr, instant=True, table=True) for expr in exprs], width, height)


def heatmap(
    title: str, description: str, query: Query, unit: str, *, width: int = 12, height: int = 8, calculate: bool = True
) -> PanelSpec:
    """`calculate=True` buckets raw series (e.g. per-GPU utilization); False plots histogram buckets."""
    panel = (
        heatmap_builder.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .calculate(calculate)
        .hide_from(common_builder.HideSeriesConfig().legend(False).tooltip(False).viz(False))
        .color(heatmap_builder.HeatmapColorOptions().mode(heatmap_models.HeatmapColorMode.SCHEME).scheme("Oranges"))
    )
    if not calculate:
        panel = panel.y_axis(heatmap_builder.YAxisConfig().unit(unit))
    return PanelSpec(panel, [query], width, height)


def bargauge(
    title: str,
    description: str,
    query: Query,
    unit: str,
    *,
    steps: Sequence[tuple[float | None, str]] = ((None, INFO),),
    min_value: float | None = 0,
    max_value: float | None = None,
    width: int = 12,
    height: int = 8,
) -> PanelSpec:
    panel = (
        bargauge_builder.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .thresholds(thresholds(*steps))
        .display_mode(common_models.BarGaugeDisplayMode.GRADIENT)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return PanelSpec(panel, [query], width, height)


def state_timeline(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    mappings: list[models.ValueMapping],
    *,
    steps: Sequence[tuple[float | None, str]],
    width: int = 24,
    height: int = 8,
) -> PanelSpec:
    panel = (
        statetimeline_builder.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .mappings(mappings)
        .thresholds(thresholds(*steps))
        .show_value(common_models.VisibilityMode.NEVER)
        .merge_values(True)
        .line_width(0)
        .fill_opacity(70)
    )
    return PanelSpec(panel, queries, width, height)


def flag_timeline(title: str, description: str, query: Query, state: str, colour: str, *, width: int) -> PanelSpec:
    """When a 0/1 series (an alert, a clocks-event reason) is 1: a bar named `state` in `colour`."""
    return state_timeline(
        title, description, [query], "none", value_text({"1": (state, colour)}), steps=((None, colour),), width=width
    )


def findings_list(title: str, description: str, tags: Sequence[str], width: int = 24, height: int = 10) -> PanelSpec:
    """The agent's findings (Grafana annotations) as a list; it reads Grafana's own store, not Prometheus."""
    panel = (
        annolist_builder.Panel()
        .title(title)
        .description(description)
        .tags(list(tags))
        .only_from_this_dashboard(False)
        .only_in_time_range(True)
        .limit(50)
        .show_tags(True)
        .show_time(True)
        .show_user(False)
        .navigate_to_panel(False)
    )
    return PanelSpec(panel, [], width, height)


def findings_annotation(extra_tags: Sequence[str] = ()) -> dashboard_builder.AnnotationQuery:
    """Findings the agent posted (tags [gpu-watchdog, alertname, node]) overlaid on every graph."""
    return (
        dashboard_builder.AnnotationQuery()
        .name("gpu-watchdog findings")
        .datasource(GRAFANA_BUILTIN)
        .enable(True)
        .hide(False)
        .icon_color("purple")
        .target(
            dashboard_builder.AnnotationTarget()
            .type("tags")
            .tags([FINDINGS_TAG, *extra_tags])
            .match_any(False)
            .limit(100)
        )
    )


def firing_alerts_annotation(selector: str) -> dashboard_builder.AnnotationQuery:
    """Prometheus alerts while they fire, from the ALERTS series Prometheus writes for every rule."""
    return (
        dashboard_builder.AnnotationQuery()
        .name("Firing alerts")
        .datasource(DATASOURCE)
        .enable(True)
        .hide(False)
        .icon_color("red")
        .expr(f'ALERTS{{alertstate="firing", {selector}}}')
    )


def builtin_annotation() -> dashboard_builder.AnnotationQuery:
    """Grafana's own "Annotations & Alerts" entry, spelled out so the JSON is stable."""
    return (
        dashboard_builder.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(GRAFANA_BUILTIN)
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
        .built_in(1)
    )


# --- template variables ------------------------------------------------------------------


def datasource_variable() -> dashboard_builder.DatasourceVariable:
    return (
        dashboard_builder.DatasourceVariable("datasource")
        .label("Data source")
        .description("Prometheus that scrapes the gpu-watchdog exporters and evaluates its rules.")
        .type("prometheus")
        .current(models.VariableOption(text="gpu-watchdog Prometheus", value=DATASOURCE_UID, selected=True))
    )


def query_variable(
    name: str,
    label: str,
    description: str,
    query: str,
    *,
    multi: bool = True,
    include_all: bool = True,
) -> dashboard_builder.QueryVariable:
    """A `label_values(...)` variable; with All, its value is `.*` so `=~"$var"` matches everything."""
    variable = (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.NATURAL_ASC)
        .multi(multi)
        .include_all(include_all)
    )
    if include_all:
        variable = variable.all_value(".*").current(models.VariableOption(text="All", value="$__all", selected=True))
    return variable


def node_variable(
    description: str, metric: str, *, multi: bool = True, include_all: bool = True
) -> dashboard_builder.QueryVariable:
    """The `node` variable: the nodes `metric` has in the selected cluster."""
    return query_variable(
        "node",
        "Node",
        description,
        f"label_values({metric}{{{CLUSTER}}}, node)",
        multi=multi,
        include_all=include_all,
    )


def gpu_node_variable(*, multi: bool = True, include_all: bool = True) -> dashboard_builder.QueryVariable:
    """Nodes that run a GPU exporter."""
    return node_variable(
        "Slurm node name (the `node` target label of the GPU exporter).",
        "nvidia_gpu_up",
        multi=multi,
        include_all=include_all,
    )


def cluster_variable() -> dashboard_builder.QueryVariable:
    # Neither exporter is guaranteed to put a `cluster` label on its series: slurm-exporter may
    # (its --cluster flag), GPU series get one only if the scrape config adds it as a target
    # label. With no such label anywhere the variable lists nothing, stays on All (`.*`), and
    # `cluster=~".*"` matches series without the label, so every query still works.
    return query_variable(
        "cluster",
        "Cluster",
        "Optional: the `cluster` label, if your exporters or scrape configs set one. "
        "All (`.*`) also matches series without the label.",
        'label_values({__name__=~"slurm_up|nvidia_gpu_up"}, cluster)',
        multi=False,
    )


# --- layout ------------------------------------------------------------------------------


class Board:
    """A dashboard under construction: rows of panels laid out left to right, ids in order."""

    def __init__(self, uid: str, title: str, description: str, extra_tags: Sequence[str] = ()) -> None:
        self._builder = (
            dashboard_builder.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([*DASHBOARD_TAGS, *extra_tags])
            .editable()
            .timezone("browser")
            .time("now-6h", "now")
            .refresh("30s")
            .tooltip(models.DashboardCursorSync.CROSSHAIR)
            .timepicker(dashboard_builder.TimePicker().refresh_intervals(["30s", "1m", "5m", "15m", "1h"]))
        )
        self._next_id = 1
        self._x = 0
        self._y = 0
        self._row_height = 0

    def _take_id(self) -> int:
        panel_id = self._next_id
        self._next_id += 1
        return panel_id

    def variables(self, *variables: cogbuilder.Builder[models.VariableModel]) -> Board:
        self._builder = self._builder.variables(list(variables))
        return self

    def annotations(self, *annotations: cogbuilder.Builder[models.AnnotationQuery]) -> Board:
        self._builder = self._builder.annotations([builtin_annotation(), *annotations])
        return self

    def link_to(self, title: str) -> Board:
        """A dropdown of the other gpu-watchdog dashboards, keeping time range and variables."""
        self._builder = self._builder.link(
            dashboard_builder.DashboardLink(title)
            .type(models.DashboardLinkType.DASHBOARDS)
            .tags(list(DASHBOARD_TAGS))
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        return self

    def row(self, title: str) -> Board:
        self._newline()
        row = (
            dashboard_builder.Row(title)
            .id(self._take_id())
            .collapsed(False)
            .grid_pos(models.GridPos(x=0, y=self._y, w=GRID_WIDTH, h=1))
        )
        self._builder = self._builder.with_row(row)
        self._y += 1
        return self

    def add(self, *specs: PanelSpec) -> Board:
        for spec in specs:
            if self._x + spec.width > GRID_WIDTH:
                self._newline()
            panel = spec.builder.id(self._take_id()).grid_pos(
                models.GridPos(x=self._x, y=self._y, w=spec.width, h=spec.height)
            )
            if spec.queries:
                panel = panel.datasource(DATASOURCE).targets(
                    [_target(query, chr(ord("A") + i)) for i, query in enumerate(spec.queries)]
                )
            self._builder = self._builder.with_panel(panel)
            self._x += spec.width
            self._row_height = max(self._row_height, spec.height)
        return self

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
        self._x = 0
        self._row_height = 0

    def build(self) -> models.Dashboard:
        return self._builder.build()


def watchdog_board(
    uid: str,
    title: str,
    description: str,
    *,
    extra_tags: Sequence[str],
    variables: Sequence[cogbuilder.Builder[models.VariableModel]],
    annotations: Sequence[cogbuilder.Builder[models.AnnotationQuery]],
) -> Board:
    """A gpu-watchdog dashboard: the datasource and cluster variables before its own, and a link
    to the other dashboards."""
    return (
        Board(uid, title, description, extra_tags=extra_tags)
        .variables(datasource_variable(), cluster_variable(), *variables)
        .annotations(*annotations)
        .link_to(DASHBOARDS_LINK)
    )
