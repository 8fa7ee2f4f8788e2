from __future__ import annotations

from datetime import timedelta

from django import template
from django.utils.safestring import SafeString

from keys.charts import Chart, chart_html

register = template.Library()


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


@register.filter
def duration(value: int | float | timedelta | None) -> str:
    """A span in words, coarse on purpose: "5 minutes", "2 days", "1 hour 30 minutes"."""
    if value is None:
        return ""
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds < 120:
        return _plural(seconds, "second")
    minutes = seconds // 60
    if minutes < 120:
        return _plural(minutes, "minute")
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return _plural(hours, "hour") + (f" {_plural(rest, 'minute')}" if rest else "")
    return _plural(hours // 24, "day")


@register.filter
def chart_markup(chart: Chart) -> SafeString:
    """A server-drawn chart as markup (keys.charts.chart_html)."""
    return chart_html(chart)
